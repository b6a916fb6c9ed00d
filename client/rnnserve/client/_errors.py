"""One exception hierarchy over gRPC status codes, for failed calls and in-band stream errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from rnnserve.v1 import rnnserve_pb2


class RnnServeError(Exception):
    """Base of every error the client raises for a failed call.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        message: the server's human-readable message.
        field: the request field at fault (e.g. ``"step.tokens.ids[3]"``) when the server named
            one, else ``None``. It comes from the error's structured details (a stream's
            in-band error, or a failed call's ``google.rpc`` details, which need the
            ``googleapis-common-protos`` package), never from the message text.
        retry_after: seconds the server asked the caller to wait before retrying (set for an
            overloaded server), else ``None``.
        reason: the server's finer reason where it gave one, e.g. ``"expired"``, ``"evicted"``
            or ``"closed"`` for a session that is gone, else ``None``.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: grpc.StatusCode | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        # The server already starts its message with the field; say it only where it did not.
        named = not self.field or self.message.startswith(f"{self.field}:")
        where = "" if named else f" (field {self.field})"
        return f"{self.code.name}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class Cancelled(RnnServeError):
    """The call was cancelled (by the client, or the channel closed)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(RnnServeError):
    """The server failed in a way it did not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RnnServeError):
    """The request is malformed: bad token id, dtype, shape, width, NaN, empty, too long, or a bad
    snapshot. ``field`` names the part of the request at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RnnServeError):
    """The call's deadline passed before it finished (the session's state is unchanged)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RnnServeError):
    """Unknown model or version, or a session that does not exist (expired, evicted, closed)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RnnServeError):
    """The thing to create already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RnnServeError):
    """The caller may not do this (PERMISSION_DENIED).

    Not used for sessions: another identity's session answers :class:`NotFound`, exactly as an
    unknown one does.
    """

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RnnServeError):
    """The server is at capacity (sessions) or overloaded; ``retry_after`` may say when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RnnServeError):
    """The model cannot do this: streaming a bidirectional model, generating from a non-LM."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RnnServeError):
    """The session was busy with another step, or the step arrived out of order."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(RnnServeError):
    """A value lies outside the range the server accepts."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RnnServeError):
    """The server does not implement this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RnnServeError):
    """The server hit an internal error (its details are logged there, never sent)."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(RnnServeError):
    """The server cannot be reached or is shutting down; idempotent calls are retried first."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(RnnServeError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RnnServeError):
    """The call lacks valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[RnnServeError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_BY_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

# The trailing metadata the server sends with a failed call (besides x-request-id): the retry
# hint in milliseconds, and google.rpc rich error details (BadRequest, ErrorInfo, RetryInfo).
_RETRY_AFTER_KEY = "retry-after-ms"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def error_class(code: grpc.StatusCode) -> type[RnnServeError]:
    """The exception class for a status code (``RnnServeError`` for OK or an unknown code)."""
    return _BY_CODE.get(code, RnnServeError)


def make_error(
    code: grpc.StatusCode,
    message: str,
    *,
    field: str | None = None,
    retry_after: float | None = None,
    reason: str | None = None,
) -> RnnServeError:
    """Build the exception for a status code, message and optional field."""
    return error_class(code)(
        message, field=field or None, code=code, retry_after=retry_after, reason=reason
    )


def from_stream_error(error: rnnserve_pb2.Error) -> RnnServeError:
    """Convert an in-band ``StreamResponse.error`` into the matching exception."""
    code = _BY_NUMBER.get(error.code) or _BY_NAME.get(error.code_name, grpc.StatusCode.UNKNOWN)
    retry_after = error.retry_after_ms / 1000.0 if error.retry_after_ms else None
    return make_error(code, error.message, field=error.field or None, retry_after=retry_after)


def _metadata_value(metadata: Sequence[Any] | None, wanted: str) -> str | bytes | None:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == wanted:
            return value  # type: ignore[no-any-return]
    return None


def _details_from_status(blob: bytes) -> tuple[str | None, float | None, str | None]:
    """Read the field, retry delay and reason from google.rpc rich error details."""
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # googleapis-common-protos is optional for the client
        return None, None, None
    status = status_pb2.Status()
    try:
        status.ParseFromString(blob)
    except Exception:  # a malformed details blob must not hide the real error
        return None, None, None
    field: str | None = None
    retry_after: float | None = None
    reason: str | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations and field is None:
                field = bad_request.field_violations[0].field or None
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if field is None and info.metadata.get("field"):
                field = info.metadata["field"]
            reason = info.metadata.get("reason") or None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return field, retry_after, reason


def from_rpc_error(
    code: grpc.StatusCode | None,
    details: str | None,
    trailing_metadata: Sequence[Any] | None,
) -> RnnServeError:
    """Convert a failed call's status, details and trailing metadata into an exception."""
    status_code = code if code is not None else grpc.StatusCode.UNKNOWN
    field: str | None = None
    retry_after: float | None = None
    reason: str | None = None
    blob = _metadata_value(trailing_metadata, _STATUS_DETAILS_KEY)
    if isinstance(blob, bytes):
        field, retry_after, reason = _details_from_status(blob)
    if retry_after is None:
        # Without googleapis-common-protos the RetryInfo detail cannot be read; this can.
        value = _metadata_value(trailing_metadata, _RETRY_AFTER_KEY)
        if value:
            try:
                retry_after = float(value) / 1000.0
            except ValueError:
                retry_after = None
    message = details or status_code.name
    return make_error(status_code, message, field=field, retry_after=retry_after, reason=reason)


def convert_rpc_error(error: grpc.RpcError) -> RnnServeError:
    """Convert a ``grpc.RpcError`` (sync) raised by a call into an ``RnnServeError``."""
    call: Any = error
    try:
        code = call.code()
        details = call.details()
        trailing = call.trailing_metadata()
    except AttributeError:  # an RpcError that is not a Call carries no status
        return Unknown(str(error))
    return from_rpc_error(code, details, trailing)
