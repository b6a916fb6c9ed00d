"""Registers gRPC services from their descriptors, with a request decoder that never raises.

The generated `add_*Servicer_to_server` functions decode with `Message.FromString`; when a
client's bytes do not parse, grpc turns that exception into UNKNOWN (naming protobuf's internal
class) for a call, and ends a whole stream. Here every method decodes with `decoder_for`, which
gives an `Undecodable` instead, so the handler answers INVALID_ARGUMENT (or in-band inside a
stream) through the one failure report. Handlers are derived from the service descriptor, so a
method added to a .proto is covered without a list to keep up to date. Interceptors given to the
server apply to these handlers as to any other.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from rnnserve.server.transport.errors import abort, report
from rnnserve.server.transport.limits import RequestLimits, body_limit
from rnnserve.server.transport.undecodable import Undecodable

Decoder = Callable[[bytes], Message | Undecodable]

# grpc's handler factory by (client streams, server streams).
_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def decoder_for(message_class: type[Message], max_bytes: int | None = None) -> Decoder:
    """`message_class.FromString`, except that bytes which do not parse, or more than
    `max_bytes` of them (not parsed at all), give an `Undecodable`."""
    parse = message_class.FromString
    undecodable = Undecodable(message_class.DESCRIPTOR.full_name)
    too_large = Undecodable(message_class.DESCRIPTOR.full_name, max_bytes)

    def decode(data: bytes) -> Message | Undecodable:
        if max_bytes is not None and len(data) > max_bytes:
            return too_large
        try:
            return parse(data)
        # DecodeError in practice (wire format, invalid UTF-8, nesting too deep); whatever the
        # parser raises is about the client's bytes, and an exception here would become UNKNOWN.
        except Exception:
            return undecodable

    return decode


def add_servicer(
    server: Any, service: ServiceDescriptor, servicer: Any, limits: RequestLimits | None = None
) -> None:
    """Serve `servicer`'s methods for `service`, whose handlers answer an `Undecodable` themselves.

    rnnserve's own servicers do: `rpc_handler` refuses an undecodable request with
    INVALID_ARGUMENT, and the stream handlers answer an undecodable message in-band. With
    `limits`, a request longer than its method's `body_limit` is not parsed (RESOURCE_EXHAUSTED).
    """
    behaviours = {m.name: getattr(servicer, m.name) for m in service.methods}
    _register(server, service, behaviours, limits)


def add_foreign_servicer(
    server: Any, service: ServiceDescriptor, servicer: Any, limits: RequestLimits | None = None
) -> None:
    """Serve a servicer written without `Undecodable` in mind (grpc's health and reflection).

    An undecodable (or over-long) request, or stream message, ends its call before the servicer
    sees it.
    """
    behaviours = {m.name: _refusing(m, getattr(servicer, m.name)) for m in service.methods}
    _register(server, service, behaviours, limits)


def _register(
    server: Any,
    service: ServiceDescriptor,
    behaviours: dict[str, Callable[..., Any]],
    limits: RequestLimits | None,
) -> None:
    def most_bytes(method: MethodDescriptor) -> int | None:
        return None if limits is None else body_limit(method.name, limits)

    handlers = {m.name: _handler(m, behaviours[m.name], most_bytes(m)) for m in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # As the generated code does: registered methods are matched without a per-call lookup.
    server.add_registered_method_handlers(service.full_name, handlers)


def _handler(method: MethodDescriptor, behaviour: Callable[..., Any], max_bytes: int | None) -> Any:
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
    return factory(
        behaviour,
        request_deserializer=decoder_for(request, max_bytes),
        response_serializer=response.SerializeToString,
    )


def _refusing(method: MethodDescriptor, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """`behaviour`, ending the call with INVALID_ARGUMENT on an undecodable request or message."""
    name = method.name

    async def checked(request: Any, context: Any) -> Any:
        if method.client_streaming:
            return _checked_messages(request, context, name)
        if isinstance(request, Undecodable):
            await _refuse(request, context, name)
        return request

    if inspect.isasyncgenfunction(behaviour):

        @functools.wraps(behaviour)
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behaviour(await checked(request, context), context):
                yield response

        return streaming

    @functools.wraps(behaviour)
    async def unary(request: Any, context: Any) -> Any:
        return await behaviour(await checked(request, context), context)

    return unary


async def _checked_messages(
    requests: AsyncIterator[Any], context: Any, name: str
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse(request, context, name)
        yield request


async def _refuse(undecodable: Undecodable, context: Any, name: str) -> None:
    err = undecodable.error()
    await abort(context, err, report(err, name))
