"""The one table from domain errors to gRPC status codes, and the decorator that applies it."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from rnnserve.server import errors as domain
from rnnserve.server.logs import REQUEST_ID, SESSION_ID
from rnnserve.server.transport import context as call_context
from rnnserve.server.transport.observe import record_call
from rnnserve.server.transport.undecodable import RequestTooLarge, Undecodable
from rnnserve.v1 import rnnserve_pb2

log = logging.getLogger(__name__)

ERROR_DOMAIN = "rnnserve.v1"
RETRY_AFTER_KEY = "retry-after-ms"
INTERNAL_MESSAGE = "internal error"
# Client strings in messages are capped where they are built (logs.safe); this backstop keeps any
# message well inside gRPC's metadata limit (8 KiB by default) and a log line short.
MAX_MESSAGE_CHARS = 1024


class StreamProtocolError(domain.RnnServeError):
    """A Stream message out of protocol order (a step before `open`, a second `open`)."""


class Unauthenticated(domain.RnnServeError):
    """A call without a valid credential (bearer token or client certificate); transport/auth.py."""


class ClientNotReading(domain.RnnServeError):
    """A server-streaming reply the client left unread for the write timeout (writer.py)."""


# Looked up along the exception's MRO, so a subclass the core adds later inherits its parent's
# code. Anything not derived from these (a bug) becomes INTERNAL with a generic message.
ERROR_TABLE: dict[type[domain.RnnServeError], grpc.StatusCode] = {
    domain.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    domain.InvalidSnapshot: grpc.StatusCode.INVALID_ARGUMENT,
    domain.SnapshotSecretRequired: grpc.StatusCode.FAILED_PRECONDITION,
    domain.SequenceNotStarted: grpc.StatusCode.INVALID_ARGUMENT,  # as Triton refuses it
    domain.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    domain.SessionNotFound: grpc.StatusCode.NOT_FOUND,
    domain.ModelNotStreamable: grpc.StatusCode.FAILED_PRECONDITION,
    domain.NotALanguageModel: grpc.StatusCode.FAILED_PRECONDITION,
    domain.SessionBusy: grpc.StatusCode.ABORTED,
    domain.CapacityExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    domain.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    domain.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    domain.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    domain.StateTierUnavailable: grpc.StatusCode.UNAVAILABLE,  # nothing changed; retry
    domain.SessionMoved: grpc.StatusCode.UNAVAILABLE,  # another replica owns it; retry
    domain.SessionStateInvalid: grpc.StatusCode.FAILED_PRECONDITION,
    StreamProtocolError: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ClientNotReading: grpc.StatusCode.RESOURCE_EXHAUSTED,  # its reply buffer stayed full
    RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own receive limit
}


@dataclass(frozen=True)
class Failure:
    """How one error is reported to a caller (as a call status or an in-band stream error)."""

    code: grpc.StatusCode
    message: str
    field: str | None = None
    retry_after_ms: int = 0
    reason: str | None = None  # e.g. SessionNotFound's "expired"; goes into ErrorInfo metadata

    @property
    def code_number(self) -> int:
        return int(self.code.value[0])

    @property
    def code_name(self) -> str:
        return str(self.code.name)


def describe(err: BaseException, request_id: str | None = None) -> Failure:
    """Map any exception to the Failure a caller sees; unknown ones never echo their text."""
    if isinstance(err, domain.RnnServeError):
        for cls in type(err).__mro__:
            code = ERROR_TABLE.get(cast(type[domain.RnnServeError], cls))
            if code is not None:
                message = f"{err.field}: {err.message}" if err.field else err.message
                if len(message) > MAX_MESSAGE_CHARS:
                    message = message[:MAX_MESSAGE_CHARS] + "…"
                retry = (
                    getattr(err, "retry_after_s", 0.0) if code.name == "RESOURCE_EXHAUSTED" else 0
                )
                return Failure(
                    code=code,
                    message=message,
                    field=err.field,
                    retry_after_ms=max(0, round(float(retry) * 1000)),
                    reason=getattr(err, "reason", None),
                )
    suffix = f" (request id {request_id})" if request_id else ""
    return Failure(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE + suffix)


def inband_error(failure: Failure) -> rnnserve_pb2.Error:
    """The `StreamResponse.error` for a failure that leaves the stream open."""
    return rnnserve_pb2.Error(
        code=failure.code_number,
        code_name=failure.code_name,
        message=failure.message,
        field=failure.field or "",
        retry_after_ms=failure.retry_after_ms,
    )


def rich_status(failure: Failure, error_name: str) -> status_pb2.Status:
    """google.rpc.Status with BadRequest / RetryInfo / ErrorInfo details (grpcio-status format)."""
    details: list[any_pb2.Any] = []
    if failure.field and failure.code == grpc.StatusCode.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=failure.field, description=failure.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if failure.retry_after_ms:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(failure.retry_after_ms)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if failure.code != grpc.StatusCode.INTERNAL:
        # The field travels structurally for every code (BadRequest only fits INVALID_ARGUMENT),
        # so a client never parses it out of the message.
        metadata = {"reason": failure.reason} if failure.reason else {}
        if failure.field:
            metadata["field"] = failure.field
        details.append(
            _pack(
                error_details_pb2.ErrorInfo(
                    reason=error_name, domain=ERROR_DOMAIN, metadata=metadata
                )
            )
        )
    return status_pb2.Status(
        code=getattr(code_pb2, failure.code_name), message=failure.message, details=details
    )


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _error_name(err: BaseException) -> str:
    """SessionNotFound -> SESSION_NOT_FOUND, the ErrorInfo reason."""
    name = type(err).__name__
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


def report(err: BaseException, method: str) -> Failure:
    """The one place a failed call or stream message is described and logged.

    Its Failure is then sent either as the call's status (`abort`) or in-band on a stream
    (`inband_error`). Unknown errors are logged with their traceback and reach the caller only as
    INTERNAL with the request id.
    """
    failure = describe(err, REQUEST_ID.get())
    if failure.code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=err, extra={"method": method, "code": "INTERNAL"})
    else:
        log.info(
            "%s -> %s: %s",
            method,
            failure.code_name,
            failure.message,
            extra={"method": method, "code": failure.code_name, "field": failure.field},
        )
    return failure


async def abort(context: Any, err: BaseException, failure: Failure) -> None:
    """End the call with the status of `failure` (raises grpc's AbortError)."""
    request_id = REQUEST_ID.get()
    trailing: list[tuple[str, str | bytes]] = [(call_context.REQUEST_ID_KEY, request_id or "")]
    if failure.retry_after_ms:
        trailing.append((RETRY_AFTER_KEY, str(failure.retry_after_ms)))
    status = rich_status(failure, _error_name(err))
    trailing.append(("grpc-status-details-bin", status.SerializeToString()))
    await context.abort(failure.code, failure.message, trailing_metadata=tuple(trailing))


Handler = TypeVar("Handler", bound=Callable[..., Any])


def rpc_handler(method: Handler) -> Handler:
    """Wrap a servicer method (coroutine or async generator): request id, errors -> status, metrics.

    Domain errors become their table code; anything else becomes INTERNAL "internal error" with the
    traceback logged. A cancelled call is recorded as CANCELLED and the cancellation propagates.
    A request whose bytes did not parse (`Undecodable`) is refused with INVALID_ARGUMENT before
    the method runs.
    """
    name = method.__name__

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            async with _HandledCall(context, name):
                _refuse_undecodable(request)
                # aclosing: if grpc closes this generator (client gone), the handler's own
                # generator (and the engine's under it) is closed now, not at garbage collection.
                async with aclosing(method(self, request, context)) as responses:
                    async for response in responses:
                        yield response

        return cast(Handler, streaming)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        async with _HandledCall(context, name):
            _refuse_undecodable(request)
            return await method(self, request, context)

    return cast(Handler, unary)


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise request.error()


class _HandledCall:
    """The life of one handled call: its log context, its failure's status, its metrics."""

    __slots__ = ("_context", "_name", "_started", "_tokens")

    def __init__(self, context: Any, name: str) -> None:
        self._context, self._name = context, name

    async def __aenter__(self) -> None:
        self._tokens = _begin(self._context)
        self._started = time.perf_counter()

    async def __aexit__(self, kind: Any, err: BaseException | None, traceback: Any) -> None:
        code = grpc.StatusCode.OK
        try:
            if isinstance(err, (asyncio.CancelledError, GeneratorExit)):
                code = grpc.StatusCode.CANCELLED  # the client went away or the server stops
            elif isinstance(err, Exception):
                failure = report(err, self._name)
                code = failure.code
                try:
                    await abort(self._context, err, failure)
                except BaseException as aborted:
                    _forget_soon(aborted)
                    raise
        finally:
            record_call(self._name, code.name, time.perf_counter() - self._started)
            _end(self._tokens)


def _forget_soon(aborted: BaseException) -> None:
    """Drop what an aborted call's exception holds, once grpc has caught it (next loop turn).

    grpc keeps the AbortError in a cycle with the call's context; through its traceback and the
    error it was raised in, every frame of the call (the request among their locals) stayed in
    memory until a full garbage collection: a refused 420 KB Predict kept ~7 MB, tens at a time.
    """

    def forget() -> None:
        aborted.__traceback__ = None
        aborted.__context__ = aborted.__cause__ = None

    asyncio.get_running_loop().call_soon(forget)


def _begin(context: Any) -> tuple[Any, Any]:
    request_id = call_context.request_id_of(context)
    with suppress(Exception):  # a context without metadata support (unit tests) still works
        context.set_trailing_metadata(((call_context.REQUEST_ID_KEY, request_id),))
    return REQUEST_ID.set(request_id), SESSION_ID.set(None)


def _end(tokens: tuple[Any, Any]) -> None:
    # An async generator may be finalised in another context; the call is over either way.
    with suppress(ValueError):
        REQUEST_ID.reset(tokens[0])
    with suppress(ValueError):
        SESSION_ID.reset(tokens[1])
