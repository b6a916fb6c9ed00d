"""The Open Inference Protocol front door, called by tritonclient exactly as a Triton user would.

tritonclient runs in its own process (triton_calls.py): its generated protocol code and the
server's cannot share one protobuf descriptor pool.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, features, open_session, output_array, step, tokens

if importlib.util.find_spec("tritonclient") is None:  # found, never imported here (see above)
    pytest.skip("tritonclient is part of the [dev] extra", allow_module_level=True)

CALLS = Path(__file__).with_name("triton_calls.py")
pytestmark = pytest.mark.slow  # each call starts a Python process with tritonclient


async def triton(rpc: Running, scenario: str, **args: Any) -> Any:
    """Run one tritonclient scenario against the server; its JSON result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CALLS),
        rpc.address,
        scenario,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def native_outputs(rpc: Running, model: str, chunks: list[Any], who: str) -> list[Any]:
    """The same chunks through the native API on a fresh session: each step's first output."""
    session = await open_session(rpc.stub, model, who)
    results = []
    for chunk in chunks:
        data = tokens(chunk) if model != tm.REGRESSOR else features(np.asarray(chunk, np.float32))
        results.append(output_array(await step(rpc.stub, session, data, who)))
    return results


async def test_health_metadata_and_config_through_tritonclient(rpc: Running) -> None:
    got = await triton(rpc, "health", model=tm.LSTM_LM)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["unknown_model_ready"] is False
    assert got["server"]["name"] == "rnnserve" and "sequence" in got["server"]["extensions"]
    metadata = got["metadata"]
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": ["1", "-1"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["logits"]
    config = got["config"]
    assert "sequence_batching" in config  # what tells perf_analyzer this is a sequence model
    assert config["input"][0]["data_type"] == "TYPE_INT64"
    assert config.get("max_batch_size", 0) == 0  # dims are whole request shapes
    stats = got["statistics"]["model_stats"]
    assert {s["version"] for s in stats} == {"1", "2"}


@pytest.mark.parametrize("mode", ["stream", "unary"])
async def test_interleaved_sequences_equal_the_native_stream(rpc: Running, mode: str) -> None:
    chunks = {"7": [[1, 2, 3], [4], [5, 6]], "ab-c": [[9], [8, 7], [6]], "12": [[0], [1], [2]]}
    got = await triton(
        rpc,
        "sequences",
        model=tm.LSTM_LM,
        mode=mode,
        identity="alice",
        outputs=["logits"],
        sequences=chunks,
    )
    for sid, sequence_chunks in chunks.items():
        expected = await native_outputs(rpc, tm.LSTM_LM, sequence_chunks, "alice")
        for index, (answer, want) in enumerate(zip(got[sid], expected, strict=True)):
            assert "error" not in answer, answer
            logits = np.asarray(answer["outputs"]["logits"], dtype=np.float32)
            assert logits.shape == (1, len(sequence_chunks[index]), len(tm.LM_VOCABULARY))
            np.testing.assert_allclose(logits[0], want, rtol=1e-5, atol=1e-6)
            steps_so_far = sum(len(c) for c in sequence_chunks[: index + 1])
            assert answer["parameters"]["step_count"] == steps_so_far
            assert answer["id"] == f"{sid}/{index}"


async def test_feature_model_sequence_equals_native(rpc: Running) -> None:
    rng = np.random.default_rng(3)
    chunks = [rng.standard_normal((n, 4)).astype(np.float32).tolist() for n in (2, 1, 3)]
    got = await triton(
        rpc,
        "sequences",
        model=tm.REGRESSOR,
        mode="stream",
        input="features",
        datatype="FP32",
        outputs=["value"],
        sequences={"5": chunks},
    )
    expected = await native_outputs(rpc, tm.REGRESSOR, chunks, "anonymous")
    for answer, want in zip(got["5"], expected, strict=True):
        np.testing.assert_allclose(np.asarray(answer["outputs"]["value"])[0], want, rtol=1e-5)


async def test_a_sequence_is_a_native_session_of_its_caller_only(rpc: Running) -> None:
    got = await triton(
        rpc,
        "sequences",
        model=tm.GRU_LM,
        mode="unary",
        identity="alice",
        outputs=["logits"],
        sequences={"41": [[1, 2], [3]]},
        end=False,
    )
    session_id = got["41"][-1]["parameters"]["rnnserve_session_id"]
    # the same session through the native API: step count, and a snapshot of its state
    info = await rpc.stub.GetSession(
        pb.GetSessionRequest(session_id=session_id), metadata=(("x-client-id", "alice"),)
    )
    assert info.session.step_count == 3
    exported = await rpc.stub.ExportState(
        pb.ExportStateRequest(session_id=session_id), metadata=(("x-client-id", "alice"),)
    )
    assert exported.snapshot
    # another caller's sequence 41 is another sequence: it was never started
    bob = await triton(rpc, "infer", model=tm.GRU_LM, identity="bob", data=[4], sequence_id=41)
    assert bob["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    alice = await triton(
        rpc, "infer", model=tm.GRU_LM, identity="alice", data=[4], sequence_id=41, end=True
    )
    assert alice["parameters"]["step_count"] == 4
    after_end = await triton(
        rpc, "infer", model=tm.GRU_LM, identity="alice", data=[4], sequence_id=41
    )
    assert "must specify the START flag" in after_end["error"]["message"]
    assert "ended" in after_end["error"]["message"]


BAD_CASES = [
    ({"sequence_id": 5}, "INVALID_ARGUMENT", "must specify the START flag"),
    ({"model": "no-such-model", "start": True, "sequence_id": 5}, "NOT_FOUND", "unknown model"),
    ({"datatype": "FP32", "start": True, "sequence_id": 5}, "INVALID_ARGUMENT", "data-type"),
    ({"shape": [1, 1, 2], "start": True, "sequence_id": 5}, "INVALID_ARGUMENT", "shape"),
    ({"input": "nope", "start": True, "sequence_id": 5}, "INVALID_ARGUMENT", "'nope'"),
    ({"data": [99], "start": True, "sequence_id": 5}, "INVALID_ARGUMENT", "inputs[0].tokens"),
    ({"start": True}, "INVALID_ARGUMENT", "correlation ID"),
    ({"outputs": ["nope"], "start": True, "sequence_id": 5}, "INVALID_ARGUMENT", "no output"),
]


@pytest.mark.parametrize(("change", "status", "words"), BAD_CASES)
@pytest.mark.parametrize("stream", [False, True])
async def test_refusals_name_the_tensor_or_parameter(
    rpc: Running, change: dict[str, Any], status: str, words: str, stream: bool
) -> None:
    args: dict[str, Any] = {"model": tm.GRU_LM, "data": [1, 2], "stream": stream, **change}
    if "shape" in change:
        args["data"] = [[[1, 2]]]
    got = await triton(rpc, "infer", **args)
    if stream:  # in-band: the message only (tritonclient gives stream errors no status)
        assert words in got["error"]["message"]
    else:
        assert got["error"]["status"] == f"StatusCode.{status}"
        assert words in got["error"]["message"]


async def test_whole_sequence_models_answer_stateless_infer_only(rpc: Running) -> None:
    got = await triton(rpc, "infer", model=tm.TAGGER, data=[1, 2, 3], outputs=["logits"])
    logits = np.asarray(got["outputs"]["logits"])
    assert logits.shape == (1, 3, 3)
    refused = await triton(
        rpc, "infer", model=tm.TAGGER, data=[1, 2], sequence_id=3, start=True, outputs=["logits"]
    )
    assert refused["error"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert "whole-sequence only" in refused["error"]["message"]
