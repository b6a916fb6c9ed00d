"""Helpers of the Redis state-tier tests: `rnnserve serve` as a process, retries, twins."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from rnnserve.server import cli
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from scale_servers import free_port
from server_helpers import identity, output_array, tokens

# How often a test re-sends a call answered UNAVAILABLE (a lease still held by a dead or paused
# process), with this pause: long enough for the 1 s leases the tests use, bounded all the same.
RETRIES = 200
RETRY_PAUSE_S = 0.05


@dataclass
class ServeProcess:
    """`rnnserve serve` running as its own process (so that a test can SIGKILL or SIGSTOP it)."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serve_process(repository: Path, *args: str) -> Iterator[ServeProcess]:
    """A server process on a free port, SERVING before this yields; killed by its pid at exit."""
    port = free_port()
    command = [
        sys.executable, "-m", "rnnserve.server.cli", "serve",
        "--port", str(port), "--metrics-port", "-1",
        "--model-repository", str(repository), *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while cli.main(["healthcheck", "--port", str(port), "--timeout", "1"]) != 0:
            assert process.poll() is None, "the server process exited while starting"
            assert time.monotonic() < deadline, "the server never became SERVING"
            time.sleep(0.2)
        yield ServeProcess(process, port)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


async def step_retrying(
    stub: rnnserve_pb2_grpc.InferenceServiceStub,
    session_id: str,
    ids: Sequence[int],
    expected_step_count: int,
    who: str = "alice",
) -> tuple[pb.StepResult, int]:
    """One step, re-sent while the answer is UNAVAILABLE (as the client library does); the result
    and how many UNAVAILABLE answers came first. `expected_step_count` makes a re-send safe."""
    unavailable = 0
    for _ in range(RETRIES):
        try:
            reply = await stub.Step(
                pb.StepRequest(
                    session_id=session_id,
                    input=tokens(ids),
                    expected_step_count=expected_step_count,
                ),
                metadata=identity(who),
                timeout=10,
            )
            return reply.result, unavailable
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            unavailable += 1
            await asyncio.sleep(RETRY_PAUSE_S)
    raise AssertionError(f"still UNAVAILABLE after {RETRIES} tries")


def first_output(result: pb.StepResult) -> npt.NDArray[np.float32]:
    """Output 0 of a step result (a language model's logits), as numpy."""
    return output_array(result, 0)
