"""One session's worth of traffic per mode: bidirectional Stream, unary Step, Generate, Predict."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from rnnserve.client._call_policy import session_metadata
from rnnserve.client.load.config import LoadConfig
from rnnserve.client.load.inputs import InputFactory
from rnnserve.client.load.pacing import Bounds, Pacer
from rnnserve.client.load.stats import Recorder
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

_FORMATS = {
    "raw": pb.OUTPUT_FORMAT_RAW,
    "probabilities": pb.OUTPUT_FORMAT_PROBABILITIES,
    "top_k": pb.OUTPUT_FORMAT_TOP_K,
    "none": pb.OUTPUT_FORMAT_NONE,
}
_STEPS = {"all": pb.OUTPUT_STEPS_ALL, "last": pb.OUTPUT_STEPS_LAST}
# Failures after which a unary session carries on; any other code ends the session.
_TRANSIENT = {
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}
# Replies to the untimed feeding of `start_position` steps stay tiny.
_QUIET = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_NONE)


@dataclass
class RunContext:
    """What every session of one phase shares."""

    config: LoadConfig
    inputs: InputFactory
    recorder: Recorder
    bounds: Bounds
    max_chunk: int

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.config.call_metadata

    @property
    def output(self) -> pb.OutputOptions:
        return pb.OutputOptions(
            steps=_STEPS[self.config.output_steps], format=_FORMATS[self.config.output_format]
        )

    @property
    def model_ref(self) -> pb.ModelRef:
        return pb.ModelRef(name=self.config.model, version=self.config.version)

    def feed_chunks(self) -> list[pb.StepInput]:
        """The untimed inputs that bring a session to `start_position`."""
        left, chunks = self.config.start_position, []
        while left > 0:
            size = min(left, self.max_chunk)
            chunks.append(self.inputs.build(size))
            left -= size
        return chunks


class SessionDriver(Protocol):
    async def run_session(self, stub: pb_grpc.InferenceServiceStub, pacer: Pacer) -> None: ...


class _Cycle:
    """Round-robin over a pool of pre-built inputs."""

    def __init__(self, pool: list[pb.StepInput]) -> None:
        self._pool = pool
        self._index = 0

    def next(self) -> pb.StepInput:
        item = self._pool[self._index % len(self._pool)]
        self._index += 1
        return item


class _SessionClock:
    """One session's timing: each answered message's latency, and the time to its first output."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._started = time.perf_counter()
        self._first = True

    def answered(self, sent: float, done: float, steps: int) -> None:
        """A message of `steps` steps sent at `sent` was answered at `done`."""
        self._recorder.ok(done, done - sent, steps)
        if self._first:
            self._recorder.session_first_output(done - self._started)
            self._first = False


async def _timed_unary(
    send: Callable[[], Awaitable[object]], pacer: Pacer, clock: _SessionClock, ctx: RunContext
) -> bool:
    """Send one paced unary message; whether the session carries on (only transient failures
    let it)."""
    sent = await pacer.wait()
    try:
        await send()
    except grpc.aio.AioRpcError as err:
        ctx.recorder.error(err.code().name)
        return err.code() in _TRANSIENT
    clock.answered(sent, time.perf_counter(), ctx.config.steps_per_message)
    return True


class StreamDriver:
    """One bidirectional Stream per session: open, `steps` step messages, close."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        steps = ctx.config.steps_per_message
        self._requests = [
            pb.StreamRequest(step=item, output=ctx.output) for item in ctx.inputs.pool(steps)
        ]
        self._index = 0

    async def run_session(self, stub: pb_grpc.InferenceServiceStub, pacer: Pacer) -> None:
        ctx, config, recorder = self.ctx, self.ctx.config, self.ctx.recorder
        clock = _SessionClock(recorder)
        chunks = ctx.feed_chunks()
        call = stub.Stream(
            metadata=ctx.metadata, timeout=config.timeout_s * (config.steps + len(chunks) + 2)
        )
        try:
            await call.write(pb.StreamRequest(open=pb.OpenSession(model=ctx.model_ref)))
            if not _stream_ok(await call.read(), recorder):
                return
            for chunk in chunks:
                await call.write(pb.StreamRequest(step=chunk, output=_QUIET))
                if not _stream_ok(await call.read(), recorder):
                    return
            # Send times of the messages in flight: up to `window` are sent before their replies.
            in_flight: deque[float] = deque()
            for _ in range(config.steps):
                if not ctx.bounds.take_message():
                    break
                if len(in_flight) >= config.window and not await self._answer(
                    call, in_flight, clock
                ):
                    return
                request = self._requests[self._index % len(self._requests)]
                self._index += 1
                in_flight.append(await pacer.wait())
                await call.write(request)
            while in_flight:
                if not await self._answer(call, in_flight, clock):
                    return
            await _close_stream(call, recorder)
        except grpc.aio.AioRpcError as err:
            recorder.error(err.code().name)
        except (grpc.aio.BaseError, asyncio.InvalidStateError):  # see _write_failed
            recorder.error(await _write_failed(call))
        finally:
            call.cancel()
            recorder.session_done()

    async def _answer(self, call: Any, in_flight: deque[float], clock: _SessionClock) -> bool:
        """Read the reply to the oldest message in flight; False if the stream ended."""
        reply = await call.read()
        done, sent = time.perf_counter(), in_flight.popleft()
        if reply is grpc.aio.EOF:
            self.ctx.recorder.error("UNAVAILABLE")
            return False
        if reply.WhichOneof("kind") == "error":
            self.ctx.recorder.error(reply.error.code_name or str(reply.error.code))
        else:
            clock.answered(sent, done, self.ctx.config.steps_per_message)
        return True


async def _close_stream(call: Any, recorder: Recorder) -> None:
    """End a stream as the protocol says: CLOSE and the half-close sent together, then the CLOSE
    reply and the call's final status read. The server ends the call only after the half-close,
    so its end is the same directly and through a proxy (no reset of a side still open)."""
    await call.write(pb.StreamRequest(control=pb.CONTROL_ACTION_CLOSE))
    await call.done_writing()
    if not _stream_ok(await call.read(), recorder):
        return
    while await call.read() is not grpc.aio.EOF:  # a non-OK final status raises here
        pass


async def _write_failed(call: Any) -> str:
    """The status name of a call whose write or half-close failed.

    grpc.aio raises its private ``ExecuteBatchError`` (or ``InvalidStateError``) instead of an
    ``AioRpcError`` when a write meets a call whose end has arrived but not yet been processed;
    the call's own status says why it ended. Cancelling first makes sure it has one (a no-op
    on a call that is over).
    """
    call.cancel()
    code: grpc.StatusCode = await call.code()
    return str(code.name)


def _stream_ok(reply: object, recorder: Recorder) -> bool:
    """Check an untimed stream reply (open, feeding); a failure counts as one error."""
    if reply is grpc.aio.EOF:
        recorder.error("UNAVAILABLE")
        return False
    assert isinstance(reply, pb.StreamResponse)
    if reply.WhichOneof("kind") == "error":
        recorder.error(reply.error.code_name or str(reply.error.code))
        return False
    return True


class StepDriver:
    """Unary calls: CreateSession, `steps` Step calls, CloseSession."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._inputs = _Cycle(ctx.inputs.pool(ctx.config.steps_per_message))

    async def run_session(self, stub: pb_grpc.InferenceServiceStub, pacer: Pacer) -> None:
        ctx, config, recorder = self.ctx, self.ctx.config, self.ctx.recorder
        timeout, metadata, output = config.timeout_s, ctx.metadata, ctx.output
        clock = _SessionClock(recorder)
        try:
            created = await stub.CreateSession(
                pb.CreateSessionRequest(model=ctx.model_ref), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            recorder.error(err.code().name)
            recorder.session_done()
            return
        session_id = created.session.session_id
        # Every later call names the session, so a proxy routes it to the process holding it.
        metadata = metadata + session_metadata(session_id)
        try:
            for chunk in ctx.feed_chunks():
                await stub.Step(
                    pb.StepRequest(session_id=session_id, input=chunk, output=_QUIET),
                    timeout=timeout,
                    metadata=metadata,
                )
            for _ in range(config.steps):
                if not ctx.bounds.take_message():
                    break
                request = pb.StepRequest(
                    session_id=session_id, input=self._inputs.next(), output=output
                )
                step = functools.partial(stub.Step, request, timeout=timeout, metadata=metadata)
                if not await _timed_unary(step, pacer, clock, ctx):
                    return
        except grpc.aio.AioRpcError as err:
            recorder.error(err.code().name)
        finally:
            recorder.session_done()
            # An expired or already-closed session is not the load's concern.
            with contextlib.suppress(grpc.aio.AioRpcError):
                close = pb.CloseSessionRequest(session_id=session_id)
                await stub.CloseSession(close, timeout=timeout, metadata=metadata)


class GenerateDriver:
    """One Generate call per session: a prompt of `steps_per_message` tokens, `steps` tokens out.

    Each streamed token is one message: its latency is the gap since the previous token (the
    first token's is the time to first output).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._seed = ctx.config.seed

    async def run_session(self, stub: pb_grpc.InferenceServiceStub, pacer: Pacer) -> None:
        ctx, config, recorder = self.ctx, self.ctx.config, self.ctx.recorder
        self._seed += 1
        request = pb.GenerateRequest(
            model=ctx.model_ref,
            tokens=pb.TokenIds(ids=ctx.inputs.tokens(config.steps_per_message).tolist()),
            sampling=pb.SamplingParams(temperature=1.0, seed=self._seed),
            max_tokens=config.steps,
            close_session=True,
        )
        started = time.perf_counter()
        call = stub.Generate(
            request, timeout=config.timeout_s * (config.steps + 1), metadata=ctx.metadata
        )
        previous = started
        try:
            async for _reply in call:
                done = time.perf_counter()
                if not ctx.bounds.take_message():
                    break
                recorder.ok(done, done - previous, 1)
                if previous == started:
                    recorder.session_first_output(done - started)
                previous = done
        except grpc.aio.AioRpcError as err:
            recorder.error(err.code().name)
        finally:
            call.cancel()
            recorder.session_done()


class PredictDriver:
    """The naive stateless baseline: every message re-sends the whole prefix through Predict.

    Message i of a session carries the first `start_position + (i + 1) * steps_per_message`
    steps and asks only for the last step's output, as a client of a stateless server must.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def run_session(self, stub: pb_grpc.InferenceServiceStub, pacer: Pacer) -> None:
        ctx, config, recorder = self.ctx, self.ctx.config, self.ctx.recorder
        steps = config.steps_per_message
        sequence = ctx.inputs.tokens(config.start_position + config.steps * steps)
        output = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=_FORMATS[config.output_format])
        clock = _SessionClock(recorder)
        try:
            for index in range(config.steps):
                if not ctx.bounds.take_message():
                    break
                length = config.start_position + (index + 1) * steps
                request = pb.PredictRequest(
                    model=ctx.model_ref,
                    sequences=[ctx.inputs.prefix(sequence[:length])],
                    output=output,
                )
                predict = functools.partial(
                    stub.Predict, request, timeout=config.timeout_s, metadata=ctx.metadata
                )
                if not await _timed_unary(predict, pacer, clock, ctx):
                    return
        finally:
            recorder.session_done()


def make_driver(ctx: RunContext) -> SessionDriver:
    """The session driver for the configured mode."""
    drivers: dict[str, type[StreamDriver | StepDriver | GenerateDriver | PredictDriver]] = {
        "stream": StreamDriver,
        "step": StepDriver,
        "generate": GenerateDriver,
        "predict": PredictDriver,
    }
    return drivers[ctx.config.mode](ctx)
