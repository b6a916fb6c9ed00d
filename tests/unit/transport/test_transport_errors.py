"""The error table and the handler decorator: codes, messages, rich details, logs, metrics."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY
from rnnserve.server import errors as domain
from rnnserve.server.logs import REQUEST_ID
from rnnserve.server.transport import errors
from rnnserve.v1 import rnnserve_pb2 as pb


class _Aborted(Exception):
    pass


class FakeContext:
    """Just enough of grpc.aio.ServicerContext for the decorator."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = [_Metadatum(k, v) for k, v in metadata]
        self.trailing: tuple[tuple[str, Any], ...] = ()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> list[Any]:
        return self.metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.trailing = metadata

    def time_remaining(self) -> float | None:
        return None

    async def abort(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[Any, ...] = ()
    ) -> None:
        self.aborted = (code, details)
        self.trailing = trailing_metadata
        raise _Aborted(details)


class _Metadatum:
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value


def _all_domain_errors() -> list[type[domain.RnnServeError]]:
    return [
        cls
        for _, cls in inspect.getmembers(domain, inspect.isclass)
        if issubclass(cls, domain.RnnServeError) and cls is not domain.RnnServeError
    ]


def test_every_domain_error_has_a_row() -> None:
    for cls in _all_domain_errors():
        assert cls in errors.ERROR_TABLE, f"{cls.__name__} would become INTERNAL"


EXPECTED = {
    "InvalidInput": "INVALID_ARGUMENT",
    "InvalidSnapshot": "INVALID_ARGUMENT",
    "ModelNotFound": "NOT_FOUND",
    "SessionNotFound": "NOT_FOUND",
    "ModelNotStreamable": "FAILED_PRECONDITION",
    "NotALanguageModel": "FAILED_PRECONDITION",
    "SessionBusy": "ABORTED",
    "CapacityExceeded": "RESOURCE_EXHAUSTED",
    "Overloaded": "RESOURCE_EXHAUSTED",
    "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "ShuttingDown": "UNAVAILABLE",
}


@pytest.mark.parametrize(("name", "code"), sorted(EXPECTED.items()))
def test_table_codes(name: str, code: str) -> None:
    assert errors.ERROR_TABLE[getattr(domain, name)].name == code


def test_subclass_inherits_its_parents_code() -> None:
    class TooLong(domain.InvalidInput):
        pass

    assert errors.describe(TooLong("x")).code == grpc.StatusCode.INVALID_ARGUMENT


def test_message_leads_with_the_field() -> None:
    err = domain.InvalidInput("expected [*, 4], got [3, 5]", field="features.shape")
    failure = errors.describe(err.with_field_prefix("step"))
    assert failure.message == "step.features.shape: expected [*, 4], got [3, 5]"
    assert failure.field == "step.features.shape"


def test_session_not_found_says_why() -> None:
    failure = errors.describe(domain.SessionNotFound("abc", "expired"))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert "expired" in failure.message and failure.reason == "expired"


def test_unknown_errors_are_generic() -> None:
    failure = errors.describe(KeyError("secret internals"), request_id="r1")
    assert failure.code == grpc.StatusCode.INTERNAL
    assert failure.message == "internal error (request id r1)"


def test_inband_error_fields() -> None:
    failure = errors.describe(domain.Overloaded("queue full", retry_after_s=0.25))
    error = errors.inband_error(failure)
    assert (error.code, error.code_name) == (8, "RESOURCE_EXHAUSTED")
    assert error.retry_after_ms == 250 and error.message == "queue full"


class _Servicer:
    def __init__(self, err: BaseException | None) -> None:
        self.err = err
        self.seen_request_id: str | None = None

    @errors.rpc_handler
    async def Unary(self, request: Any, context: Any) -> str:
        self.seen_request_id = REQUEST_ID.get()
        if self.err is not None:
            raise self.err
        return "ok"

    @errors.rpc_handler
    async def Streaming(self, request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        if self.err is not None:
            raise self.err
        yield 2


def _count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("rnnserve_requests_total", {"method": method, "code": code})
    return value or 0.0


async def test_success_returns_and_counts_and_echoes_request_id() -> None:
    before = _count("Unary", "OK")
    servicer, context = _Servicer(None), FakeContext((("x-request-id", "req-7"),))
    assert await servicer.Unary(None, context) == "ok"
    assert servicer.seen_request_id == "req-7"
    assert ("x-request-id", "req-7") in context.trailing
    assert _count("Unary", "OK") == before + 1
    assert REQUEST_ID.get() is None  # the call's id does not leak past it


async def test_domain_error_aborts_with_rich_status() -> None:
    err = domain.InvalidInput(
        "id 25 is outside the vocabulary [0, 20)", field="input.tokens.ids[1]"
    )
    before = _count("Unary", "INVALID_ARGUMENT")
    context = FakeContext()
    with pytest.raises(_Aborted):
        await _Servicer(err).Unary(None, context)
    assert context.aborted == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input.tokens.ids[1]: id 25 is outside the vocabulary [0, 20)",
    )
    details = dict(context.trailing)["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "input.tokens.ids[1]"
    info = error_details_pb2.ErrorInfo()
    assert status.details[-1].Unpack(info) and info.reason == "INVALID_INPUT"
    assert _count("Unary", "INVALID_ARGUMENT") == before + 1


async def test_overloaded_carries_a_retry_hint() -> None:
    context = FakeContext()
    with pytest.raises(_Aborted):
        await _Servicer(domain.Overloaded("queue full", retry_after_s=0.05)).Unary(None, context)
    assert dict(context.trailing)["retry-after-ms"] == "50"
    status = status_pb2.Status.FromString(dict(context.trailing)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.ToMilliseconds() == 50


async def test_unknown_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    context = FakeContext((("x-request-id", "req-9"),))
    with caplog.at_level(logging.ERROR), pytest.raises(_Aborted):
        await _Servicer(ZeroDivisionError("weights/secret.bin")).Unary(None, context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error (request id req-9)")
    assert "weights/secret.bin" not in context.aborted[1]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_streaming_handler_error_after_first_message() -> None:
    context = FakeContext()
    received = []
    with pytest.raises(_Aborted):
        async for item in _Servicer(domain.NotALanguageModel("no")).Streaming(None, context):
            received.append(item)
    assert received == [1]
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancellation_propagates_and_counts() -> None:
    import asyncio

    before = _count("Unary", "CANCELLED")
    with pytest.raises(asyncio.CancelledError):
        await _Servicer(asyncio.CancelledError()).Unary(None, FakeContext())
    assert _count("Unary", "CANCELLED") == before + 1


def test_error_proto_matches_table_numbers() -> None:
    error = errors.inband_error(errors.describe(domain.SessionBusy("busy")))
    assert isinstance(error, pb.Error)
    assert error.code == grpc.StatusCode.ABORTED.value[0]
