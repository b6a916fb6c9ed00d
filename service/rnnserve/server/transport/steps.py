"""The one step path of rnnserve.v1: unary Step and every Stream step message go through it."""

from __future__ import annotations

import asyncio

from rnnserve.server.core import InferenceCore
from rnnserve.server.offload import LARGE_RESULT_STEPS
from rnnserve.server.transport import codecs
from rnnserve.server.transport.limits import DEFAULT_LIMITS, RequestLimits
from rnnserve.v1 import rnnserve_pb2 as pb


async def run_step(
    core: InferenceCore,
    result: pb.StepResult,
    *,
    session_id: str,
    identity: str,
    step_input: pb.StepInput,
    input_field: str,
    output: pb.OutputOptions,
    deadline: float | None,
    expected_step_count: int | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> None:
    """Decode one message of input, step the session, write the outcome into `result` in place.

    `input_field` is the input's name in the request ("input" in StepRequest, "step" in
    StreamRequest): every error about the input names its field under it. The request caps
    (`limits`) are checked before the input is decoded; a long result is encoded off the loop.
    """
    data = codecs.decode_input(step_input, input_field, limits)
    options = codecs.decode_output_options(output)
    outcome = await core.step(
        session_id,
        identity,
        data,
        options,
        input_field=input_field,
        expected_step_count=expected_step_count,
        deadline=deadline,
    )
    if outcome.steps >= LARGE_RESULT_STEPS:
        await asyncio.to_thread(codecs.fill_step, result, outcome)
    else:  # the hot path (a token or a short chunk): no coroutine, no thread
        codecs.fill_step(result, outcome)
