"""Request bytes that do not parse: INVALID_ARGUMENT naming the expected message, on every method
of both front doors (and health and reflection); inside a stream an in-band error, after which
the stream and its session carry on as if the message had never been sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tiny_models as tm
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.server.tokens import token_line
from rnnserve.server.transport.kserve.servicer import KServeServicer
from rnnserve.server.transport.registration import add_servicer, decoder_for
from rnnserve.server.transport.undecodable import Undecodable
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, identity, open_session, output_array, step, tokens

SERVICES = [
    pb.DESCRIPTOR.services_by_name["InferenceService"],
    kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = [method for service in SERVICES for method in service.methods]
# Bytes that are not a valid message of any of these types: a truncated length-delimited field,
# and field 1 as a string of invalid UTF-8 (field 1 is a string in most requests here).
BAD_BODIES = {
    "truncated": b"\x0a\x05ab",
    "wire type 7": b"\x0f\x01",
    "invalid UTF-8": b"\x0a\x02\xff\xfe",
}
ALICE = identity("alice")


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _parses(method: MethodDescriptor, body: bytes) -> bool:
    return not isinstance(decoder_for(_request_class(method))(body), Undecodable)


def _request_class(method: MethodDescriptor) -> Any:
    return message_factory.GetMessageClass(method.input_type)


def _error_info_reason(err: grpc.aio.AioRpcError) -> str:
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _requests_counted(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("rnnserve_requests_total", {"method": method, "code": code})
    return value or 0.0


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
async def test_undecodable_request_is_invalid_argument(
    rpc: Running, method: MethodDescriptor
) -> None:
    """Every method (derived from the descriptors, so none is forgotten) refuses bytes that do
    not parse with INVALID_ARGUMENT that names the message, never UNKNOWN or INTERNAL, and never
    protobuf's internals or the bytes themselves."""
    for label, body in BAD_BODIES.items():
        if _parses(method, body):  # field 1 is bytes in this message: not a bad body for it
            continue
        if method.client_streaming and method.containing_service.name != "ServerReflection":
            continue  # rnnserve and KServe streams answer in-band: the tests below
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method.client_streaming:
                call = rpc.channel.stream_stream(_path(method))(timeout=5, metadata=ALICE)
                await call.write(body)
                await call.read()
            elif method.server_streaming:
                async for _ in rpc.channel.unary_stream(_path(method))(
                    body, timeout=5, metadata=ALICE
                ):
                    pass
            else:
                await rpc.channel.unary_unary(_path(method))(body, timeout=5, metadata=ALICE)
        err = caught.value
        details = err.details() or ""
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, err.code(), details)
        assert f"the request body is not a valid {method.input_type.full_name} message" in details
        assert "DecodeError" not in details and "protobuf" not in details.replace(
            "malformed protobuf wire format", ""
        )
        assert _error_info_reason(err) == "MALFORMED_REQUEST"


async def test_undecodable_unary_request_is_reported_and_counted(rpc: Running) -> None:
    before = _requests_counted("Step", "INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError):
        await rpc.channel.unary_unary("/rnnserve.v1.InferenceService/Step")(b"\x0a\x05ab")
    assert _requests_counted("Step", "INVALID_ARGUMENT") == before + 1


async def test_stream_answers_an_undecodable_message_in_band_and_carries_on(
    rpc: Running,
) -> None:
    """Messages sent ahead of their replies (a pipeline): step, undecodable bytes, step. The
    bytes get an in-band INVALID_ARGUMENT in their place; the steps around them run as if they
    were never sent (the session equals a twin that never saw them)."""
    twin = await open_session(rpc.stub, tm.GRU_LM)
    before = _requests_counted("Stream.undecodable", "INVALID_ARGUMENT")
    call = rpc.channel.stream_stream("/rnnserve.v1.InferenceService/Stream")(
        timeout=10, metadata=ALICE
    )
    opening = pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=tm.GRU_LM)))
    await call.write(opening.SerializeToString())
    assert pb.StreamResponse.FromString(await call.read()).WhichOneof("kind") == "session"
    first = pb.StreamRequest(request_id="first", step=tokens([1, 2]))
    second = pb.StreamRequest(request_id="second", step=tokens([3]))
    for body in (
        first.SerializeToString(),
        BAD_BODIES["invalid UTF-8"],
        second.SerializeToString(),
    ):
        await call.write(body)
    replies = [pb.StreamResponse.FromString(await call.read()) for _ in range(3)]
    await call.done_writing()
    assert [r.WhichOneof("kind") for r in replies] == ["result", "error", "result"]
    assert replies[1].error.code_name == "INVALID_ARGUMENT"
    assert "not a valid rnnserve.v1.StreamRequest message" in replies[1].error.message
    assert [replies[0].request_id, replies[2].request_id] == ["first", "second"]
    assert await call.code() == grpc.StatusCode.OK
    await step(rpc.stub, twin, tokens([1, 2]))
    theirs = await step(rpc.stub, twin, tokens([3]))
    assert replies[2].result.step_count == theirs.step_count == 3
    np.testing.assert_array_equal(output_array(replies[2].result), output_array(theirs))
    assert _requests_counted("Stream.undecodable", "INVALID_ARGUMENT") == before + 1


def _infer(ids: list[int], sequence: str, *, start: bool = False) -> kpb.ModelInferRequest:
    message = kpb.ModelInferRequest(model_name=tm.GRU_LM, id=sequence)
    message.inputs.add(name="tokens", datatype="INT64", shape=[1, len(ids)])
    message.raw_input_contents.append(np.asarray(ids, "<i8").tobytes())
    message.parameters["sequence_id"].string_param = sequence
    message.parameters["sequence_start"].bool_param = start
    return message


def _logits(response: kpb.ModelInferResponse) -> Any:
    return np.frombuffer(response.raw_output_contents[0], "<f4")


async def test_model_stream_infer_answers_undecodable_bytes_in_band_and_carries_on(
    rpc: Running,
) -> None:
    infer = rpc.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=kpb.ModelInferRequest.SerializeToString,
        response_deserializer=kpb.ModelInferResponse.FromString,
    )
    await infer(_infer([1, 2], "twin", start=True))
    theirs = await infer(_infer([3], "twin"))
    call = rpc.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(timeout=10)
    for body in (
        _infer([1, 2], "mine", start=True).SerializeToString(),
        BAD_BODIES["truncated"],
        _infer([3], "mine").SerializeToString(),
    ):
        await call.write(body)
    replies = [kpb.ModelStreamInferResponse.FromString(await call.read()) for _ in range(3)]
    await call.done_writing()
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert "not a valid inference.ModelInferRequest message" in replies[1].error_message
    mine = replies[2].infer_response
    assert mine.parameters["step_count"].int64_param == 3
    np.testing.assert_array_equal(_logits(mine), _logits(theirs))
    assert await call.code() == grpc.StatusCode.OK


class _RequireKey(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without metadata x-key: open (as an authentication interceptor would)."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if ("x-key", "open") in tuple(details.invocation_metadata or ()):
            return await continuation(details)

        async def deny(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no key")

        return grpc.unary_unary_rpc_method_handler(deny)


async def test_interceptors_run_before_services_registered_from_descriptors() -> None:
    """An interceptor sees every call, undecodable ones included, before the handler decodes or
    refuses anything: without the key even garbage is UNAUTHENTICATED; with it, garbage is
    INVALID_ARGUMENT and a valid request is served."""
    server = grpc.aio.server(interceptors=[_RequireKey()])
    service = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    add_servicer(server, service, KServeServicer(core=None, sequence_idle_s=60))  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            key = (("x-key", "open"),)
            for body, metadata, code in (
                (b"", (), grpc.StatusCode.UNAUTHENTICATED),
                (b"\x0f\x01", (), grpc.StatusCode.UNAUTHENTICATED),
                (b"\x0f\x01", key, grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await live(body, metadata=metadata, timeout=5)
                assert caught.value.code() == code
            reply = kpb.ServerLiveResponse.FromString(await live(b"", metadata=key, timeout=5))
            assert reply.live
    finally:
        await server.stop(None)


async def test_with_tokens_on_undecodable_bytes_are_unauthenticated_before_they_are_read(
    serve: Callable[..., Awaitable[Running]], tmp_path: Path
) -> None:
    """The server's own authentication interceptor runs first: garbage without a token is
    UNAUTHENTICATED (nothing was parsed); the same garbage with a valid token is
    INVALID_ARGUMENT."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(token_line("t0ken-for-the-undecodable-test", "alice") + "\n")
    running = await serve(auth_tokens_file=tokens_file)
    token = (("authorization", "Bearer t0ken-for-the-undecodable-test"),)
    step_call = running.channel.unary_unary("/rnnserve.v1.InferenceService/Step")
    refusals = (((), grpc.StatusCode.UNAUTHENTICATED), (token, grpc.StatusCode.INVALID_ARGUMENT))
    for metadata, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await step_call(BAD_BODIES["truncated"], metadata=metadata, timeout=5)
        assert caught.value.code() == code
