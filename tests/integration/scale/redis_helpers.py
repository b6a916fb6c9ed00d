"""Helpers of the Redis state-tier tests: retries, twins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np
import numpy.typing as npt
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from server_helpers import identity, output_array, tokens

# How often a test re-sends a call answered UNAVAILABLE (a lease still held by a dead or paused
# process), with this pause: long enough for the 1 s leases the tests use, bounded all the same.
RETRIES = 200
RETRY_PAUSE_S = 0.05


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
