"""`rnnserve serve` as a real process: healthcheck, JSON logs, SIGTERM drains and snapshots."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from rnnserve.server import cli
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from tiny_models import GRU_LM


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_serve_until_sigterm_then_exit_cleanly(tiny_repository: Path, tmp_path: Path) -> None:
    port = _free_port()
    snapshots = tmp_path / "snapshots"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "rnnserve.server.cli", "serve",
            "--port", str(port),
            "--metrics-port", "-1",
            "--model-repository", str(tiny_repository),
            "--snapshot-dir", str(snapshots),
            "--log-json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while cli.main(["healthcheck", "--port", str(port), "--timeout", "1"]) != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the server never became SERVING"
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
            created = stub.CreateSession(
                pb.CreateSessionRequest(model=pb.ModelRef(name=GRU_LM)), timeout=10
            )
            stub.Step(
                pb.StepRequest(
                    session_id=created.session.session_id,
                    input=pb.StepInput(tokens=pb.TokenIds(ids=[1, 2])),
                ),
                timeout=10,
            )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert cli.main(["healthcheck", "--port", str(port), "--timeout", "0.5"]) == 2
    assert any(snapshots.iterdir()), "live sessions were not written on SIGTERM"
    assert process.stderr is not None
    lines = [
        json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")
    ]
    messages = [entry["message"] for entry in lines]
    assert any("serving rnnserve.v1" in m for m in messages)
    assert any("stop requested" in m for m in messages)
    # At INFO a session id is logged as its 8-character prefix (enough to correlate), never whole.
    session_id = created.session.session_id
    assert any(session_id[:8] in m for m in messages), "the session should appear in the logs"
    assert not any(session_id in m for m in messages), "a whole session id was logged at INFO"
