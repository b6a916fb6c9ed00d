"""Another language calls rnnserve: a Node.js client (@grpc/grpc-js) streams tokens and its
outputs match the Python client's and a whole-sequence onnxruntime run."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnnserve.client import AsyncClient
from rnnserve.server.app import build_server
from rnnserve.server.settings import Settings
from tiny_models import GRU_LM, LM_VOCABULARY, LSTM_LM, RNN_LM, run_whole_sequence

NODE_DIR = Path(__file__).parent
PROTO = NODE_DIR.parents[2] / "protos" / "rnnserve" / "v1" / "rnnserve.proto"
# One message per input: text, token ids, a bad token id (refused in-band), more text.
INPUTS: list[Any] = ["hello", [0, 1, 2], "b", [99], ", a fig.\n"]
GOOD_INPUTS = [item for item in INPUTS if item != [99]]

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js (`node`) is not on PATH"),
]


def _ids(item: str | list[int]) -> list[int]:
    return [LM_VOCABULARY.index(c) for c in item] if isinstance(item, str) else list(item)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """Install the pinned npm packages once (npm ci when the lock file is there)."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: cannot install @grpc/grpc-js")
        command = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
        subprocess.run(
            [npm, command, "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600
        )
    return modules


@pytest.fixture
async def target(tiny_repository: Path) -> AsyncIterator[str]:
    settings = Settings(
        host="127.0.0.1", port=0, metrics_port=None, model_repository=tiny_repository
    )
    server, port = build_server(settings)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(1.0)


async def run_node(target: str, model: str, inputs: list[Any]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "client.js"),
        "--target", target,
        "--model", model,
        "--inputs", json.dumps(inputs),
        "--client-id", "node-e2e",
        "--proto", str(PROTO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", [RNN_LM, GRU_LM, LSTM_LM])
async def test_node_client_streams_and_matches_python(
    node_modules: Path, target: str, tiny_repository: Path, model: str
) -> None:
    report = await run_node(target, model, INPUTS)

    assert report["session"]["model"] == model
    replies = report["replies"]
    assert [reply["request_id"] for reply in replies] == [str(i) for i in range(len(INPUTS))]
    # The bad message came back in-band; the stream and the session carried on.
    error = replies[3]["error"]
    assert error["code_name"] == "INVALID_ARGUMENT" and error["field"] == "step.tokens.ids[0]"
    results = [reply["result"] for reply in replies if "result" in reply]
    total = sum(len(_ids(item)) for item in GOOD_INPUTS)
    assert [r["step_count"] for r in results][-1] == total == report["closed"]["step_count"]

    node_rows = [
        np.asarray(r["outputs"][0]["tensor"]["values"], dtype=np.float32).reshape(
            r["outputs"][0]["tensor"]["shape"]
        )
        for r in results
    ]
    async with (
        AsyncClient(target, client_id="python") as client,
        client.session(model) as session,
    ):
        python_rows = [(await session.feed(item)).tensor for item in GOOD_INPUTS]
    for node_row, python_row in zip(node_rows, python_rows, strict=True):
        np.testing.assert_allclose(node_row, python_row, atol=1e-5)

    ids = np.array([i for item in GOOD_INPUTS for i in _ids(item)], dtype=np.int64)
    expected = run_whole_sequence(tiny_repository / model, ids)["logits"]
    np.testing.assert_allclose(np.concatenate(node_rows), expected, atol=1e-5)
    labels = [label for r in results for label in r["outputs"][0]["labels"]]
    assert labels == [LM_VOCABULARY[i] for i in expected.argmax(axis=1)]
