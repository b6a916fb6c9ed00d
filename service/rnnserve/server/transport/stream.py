"""One `Stream` call: opens or resumes its session, then answers each message, errors in-band."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeGuard, TypeVar

from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import InputData, OutputOptions, SessionView, StepOutcome
from rnnserve.server.errors import InvalidInput, RnnServeError, SessionNotFound, ShuttingDown
from rnnserve.server.logs import SESSION_ID
from rnnserve.server.transport import codecs
from rnnserve.server.transport.affinity import announce_session
from rnnserve.server.transport.context import deadline_of, identity_of
from rnnserve.server.transport.errors import StreamProtocolError, inband_error, report
from rnnserve.server.transport.limits import DEFAULT_LIMITS, RequestLimits
from rnnserve.server.transport.observe import record_call
from rnnserve.server.transport.steps import run_step
from rnnserve.server.transport.undecodable import Undecodable
from rnnserve.v1 import rnnserve_pb2 as pb

log = logging.getLogger(__name__)

# Step messages already waiting that one model call may take together, and how many messages a
# stream reads ahead of the one being answered (beyond that, gRPC's flow control holds the sender).
MAX_JOINED = 64
MAX_JOINED_STEPS = 256  # the scheduler's longest call: a longer message runs in segments anyway
MAX_READ_AHEAD = 256
# How long the server waits, after closing a stream's session, for the client to half-close.
CLOSE_GRACE_S = 5.0
_JOINABLE = frozenset({"tokens", "features"})
# A message as the request decoder gives it: an Undecodable when its bytes did not parse.
Incoming = pb.StreamRequest | Undecodable
Wanted = TypeVar("Wanted", bound=Incoming)


class StreamConversation:
    """The state of one Stream call: which session it is bound to, and whether that still lives.

    Messages are handled strictly one after another, so a stream never races itself; a message's
    error becomes its in-band reply and the session's state stays as it was. Only a server
    shutdown ends the stream with a status (UNAVAILABLE), so the client reconnects elsewhere.

    A client may send messages ahead of their replies (a pipeline). The messages are read as they
    arrive; when several step messages are already waiting, they run as one multi-step model call
    (`InferenceCore.step_many`), with the outcomes and replies that one-by-one steps would give.
    """

    def __init__(
        self, core: InferenceCore, context: Any, *, limits: RequestLimits = DEFAULT_LIMITS
    ) -> None:
        self._core = core
        self._limits = limits  # request caps, checked before a message is decoded
        self._context = context
        self._identity = identity_of(context)
        self._session_id: str | None = None
        self._session_gone = False  # the core said the session no longer exists
        self.finished = False  # set once the session is closed: the stream ends at the half-close
        self._replied = False  # a reply was built (the call's headers went out with the first)

    async def run(
        self, requests: AsyncIterator[Incoming]
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        """Answer every request in order, exactly one response each."""
        inbox = ReadAhead(requests)
        try:
            while (request := await inbox.next()) is not None:
                # (a client waiting for each reply leaves nothing behind its message: no checks)
                if (
                    inbox.waiting
                    and self._joins(request)
                    and (joined := inbox.take_while(self._joiner(request), MAX_JOINED - 1))
                ):
                    for response in await self.answer_together([request, *joined]):
                        yield response
                else:
                    yield await self.answer(request)
                if self.finished:
                    await _await_half_close(inbox)
                    return
        finally:
            await inbox.close()

    async def answer(self, request: Incoming) -> pb.StreamResponse:
        """Handle one message; a failure becomes an in-band error reply."""
        started = time.perf_counter()
        if isinstance(request, Undecodable):  # its bytes did not parse: the stream goes on
            return self._reply(request, "undecodable", started, request.error())
        kind = request.WhichOneof("kind") or "empty"
        try:
            response = await self._dispatch(kind, request)
        except ShuttingDown:
            record_call(f"Stream.{kind}", "UNAVAILABLE", time.perf_counter() - started)
            raise
        except Exception as err:
            return self._reply(request, kind, started, err)
        return self._reply(request, kind, started, response)

    async def answer_together(self, requests: list[pb.StreamRequest]) -> list[pb.StreamResponse]:
        """Step messages already waiting, run as one model call; one reply each, in order."""
        started = time.perf_counter()
        results: list[StepOutcome | Exception | None] = [None] * len(requests)
        decoded: list[tuple[InputData, OutputOptions]] = []
        positions: list[int] = []
        for index, request in enumerate(requests):
            try:
                data = codecs.decode_input(request.step, "step", self._limits)
                decoded.append((data, codecs.decode_output_options(request.output)))
                positions.append(index)
            except RnnServeError as err:
                results[index] = err
        if decoded:
            assert self._session_id is not None  # _joins asked for a live session
            outcomes: list[StepOutcome | RnnServeError] | list[Exception]
            try:
                outcomes = await self._core.step_many(
                    self._session_id,
                    self._identity,
                    decoded,
                    input_field="step",
                    deadline=deadline_of(self._context),
                )
            except ShuttingDown:
                for _ in requests:
                    record_call("Stream.step", "UNAVAILABLE", time.perf_counter() - started)
                raise
            except Exception as err:  # about the session itself: every message gets it
                outcomes = [err] * len(positions)
            for index, outcome in zip(positions, outcomes, strict=True):
                results[index] = outcome
        replies = []
        for request, result in zip(requests, results, strict=True):
            assert result is not None  # every message has its outcome or its error
            replies.append(self._reply(request, "step", started, result))
        return replies

    def _reply(
        self,
        request: Incoming,
        kind: str,
        started: float,
        result: pb.StreamResponse | StepOutcome | Exception,
    ) -> pb.StreamResponse:
        """The reply to one message: its response, its outcome, or its error in-band; counted."""
        code = "OK"
        if isinstance(result, Exception):
            if isinstance(result, SessionNotFound) and result.session_id == self._session_id:
                self._session_gone = True  # steps keep saying why; `open` may bind a new one
            failure = report(result, f"Stream.{kind}")
            code = failure.code_name
            response = pb.StreamResponse(error=inband_error(failure))
        elif isinstance(result, StepOutcome):
            response = pb.StreamResponse()
            codecs.fill_step(response.result, result)
        else:
            response = result
        record_call(f"Stream.{kind}", code, time.perf_counter() - started)
        self._replied = True
        if isinstance(request, pb.StreamRequest):  # an undecodable message has no id to echo
            response.request_id = request.request_id
        return response

    def _joiner(self, first: pb.StreamRequest) -> Callable[[Incoming], TypeGuard[pb.StreamRequest]]:
        """Whether a waiting message joins `first`'s call: a joinable step, while the call's
        steps stay within MAX_JOINED_STEPS (long messages gain nothing from joining, and the
        outputs of one call are held at once)."""
        budget = MAX_JOINED_STEPS - _steps(first)

        def joins(request: Incoming) -> TypeGuard[pb.StreamRequest]:
            nonlocal budget
            if not self._joins(request) or (steps := _steps(request)) > budget:
                return False
            budget -= steps
            return True

        return joins

    def _joins(self, request: Incoming) -> TypeGuard[pb.StreamRequest]:
        """Whether a message may run in one call with its neighbours: a step of ids or frames
        (text is left alone: a word model's tokens can span the messages), not guarded by an
        expected step count, on a live session."""
        return (
            isinstance(request, pb.StreamRequest)
            and request.WhichOneof("kind") == "step"
            and request.step.WhichOneof("data") in _JOINABLE
            and not request.HasField("expected_step_count")
            and self._session_id is not None
            and not self._session_gone
        )

    async def _dispatch(self, kind: str, request: pb.StreamRequest) -> pb.StreamResponse:
        if kind == "open":
            return await self._open(request.open)
        session_id = self._require_session(kind)
        if kind == "step":
            response = pb.StreamResponse()
            await run_step(
                self._core,
                response.result,
                session_id=session_id,
                identity=self._identity,
                step_input=request.step,
                input_field="step",
                output=request.output,
                deadline=deadline_of(self._context),
                expected_step_count=codecs.decode_expected_step_count(request),
                limits=self._limits,
            )
            return response
        return await self._control(session_id, request.control)

    async def _open(self, message: pb.OpenSession) -> pb.StreamResponse:
        if self._session_id is not None and not self._session_gone:
            raise StreamProtocolError(
                "this stream already has a session; open must be the stream's first message",
                field="open",
            )
        try:
            view = await self._bind(message)
        except ShuttingDown:
            raise
        except RnnServeError as err:
            raise err.with_field_prefix("open") from None  # "model.name" -> "open.model.name"
        self._session_id, self._session_gone = view.session_id, False
        SESSION_ID.set(view.session_id)
        if not self._replied:  # headers go out with the first reply only
            await announce_session(self._context, view.session_id)
        log.info("stream bound to session", extra={"model": view.model, "version": view.version})
        return pb.StreamResponse(session=codecs.encode_session(view))

    async def _bind(self, message: pb.OpenSession) -> SessionView:
        source = message.WhichOneof("source")
        if source == "model":
            name, version = codecs.decode_model_ref(message.model, limits=self._limits)
            return await self._core.create_session(name, version, self._identity)
        if source == "session_id":
            session_id = codecs.decode_session_id(message.session_id, limits=self._limits)
            return await self._core.get_session(session_id, self._identity)
        if source == "snapshot":
            return await self._core.import_state(message.snapshot, self._identity)
        raise InvalidInput("one of model, session_id or snapshot must be set", field="")

    async def _control(self, session_id: str, action: int) -> pb.StreamResponse:
        if action == pb.CONTROL_ACTION_RESET:
            view = await self._core.reset_session(session_id, self._identity)
            return pb.StreamResponse(session=codecs.encode_session(view))
        if action == pb.CONTROL_ACTION_SNAPSHOT:
            snapshot, _ = await self._core.export_state(session_id, self._identity)
            return pb.StreamResponse(snapshot=snapshot)
        if action == pb.CONTROL_ACTION_CLOSE:
            view = await self._core.close_session(session_id, self._identity)
            self._session_id, self.finished = None, True
            return pb.StreamResponse(session=codecs.encode_session(view))
        raise InvalidInput(f"unknown control action {action}", field="control")

    def _require_session(self, kind: str) -> str:
        if kind == "empty":
            raise InvalidInput("one of open, step or control must be set", field="kind")
        if self._session_id is None:
            raise StreamProtocolError(
                "no session is open on this stream: send an open message first", field=kind
            )
        return self._session_id


async def _await_half_close(inbox: ReadAhead) -> None:
    """After CLOSE: read (and answer nothing to) the client's last messages until it half-closes,
    for at most CLOSE_GRACE_S.

    Ending the call while the client may still send is legal HTTP/2, but a proxy in between
    (HAProxy 2.6) then resets the client's side of the stream: the client saw CANCELLED, or its
    half-close failed, instead of the OK that ended its session. Waiting for the half-close makes
    the end identical directly and through a proxy; the bound keeps a client that never
    half-closes from holding the call.
    """
    # A timeout or a failed read (the client cancelled): the call ends either way.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_GRACE_S):
            while await inbox.next() is not None:
                pass


def _steps(request: pb.StreamRequest) -> int:
    """Steps a step message carries, read from the message without decoding it."""
    if request.step.WhichOneof("data") == "tokens":
        return len(request.step.tokens.ids)
    shape = request.step.features.shape
    return int(shape[0]) if shape else 0


class ReadAhead:
    """Reads a call's requests as they arrive, so that those already received can be seen together.

    A task moves requests from gRPC into a buffer (at most MAX_READ_AHEAD); `next` waits for one,
    `take_while` takes those already there. The end of the requests, or the error that ended
    them, comes out of `next` in order, after the requests received before it. The two sides
    wake each other with a bare future (one waiter each, no asyncio.Event): this runs on every
    message of every stream.
    """

    def __init__(self, requests: AsyncIterator[Incoming]) -> None:
        self._loop = asyncio.get_running_loop()
        self._buffer: deque[Incoming] = deque()
        self._arrived: asyncio.Future[None] | None = None  # `next` waiting for a request
        self._room: asyncio.Future[None] | None = None  # the reading task waiting for room
        self._ended = False
        self._error: BaseException | None = None
        self._task = self._loop.create_task(self._read(requests))

    async def _read(self, requests: AsyncIterator[Incoming]) -> None:
        try:
            async for request in requests:
                self._buffer.append(request)
                _wake(self._arrived)
                if len(self._buffer) >= MAX_READ_AHEAD:
                    self._room = self._loop.create_future()
                    await self._room
        except Exception as err:  # the call failed while reading: the reader raises it in order
            self._error = err
        finally:
            self._ended = True
            _wake(self._arrived)

    async def next(self) -> Incoming | None:
        """The next request (waiting for it), or None once the client has sent its last."""
        while not self._buffer:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._arrived = self._loop.create_future()
            await self._arrived
        request = self._buffer.popleft()
        _wake(self._room)
        return request

    @property
    def waiting(self) -> int:
        """Requests received and not yet taken."""
        return len(self._buffer)

    def take_while(
        self, wanted: Callable[[Incoming], TypeGuard[Wanted]], limit: int
    ) -> list[Wanted]:
        """Up to `limit` requests already received, from the front, while `wanted` says yes."""
        taken: list[Wanted] = []
        while self._buffer and len(taken) < limit:
            head = self._buffer[0]
            if not wanted(head):
                break
            taken.append(head)
            self._buffer.popleft()
        if taken:
            _wake(self._room)
        return taken

    async def close(self) -> None:
        """Stop reading (the call is over)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve a side's waiting future, if it is waiting."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
