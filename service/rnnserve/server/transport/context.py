"""What a handler learns from a gRPC call besides its request: identity, request id, deadline."""

from __future__ import annotations

import time
import uuid

import grpc

IDENTITY_KEY = "x-client-id"
REQUEST_ID_KEY = "x-request-id"
DEFAULT_IDENTITY = "anonymous"
# Longer client-chosen ids are replaced: they end up in every log line of the call.
MAX_REQUEST_ID_LENGTH = 128


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of metadata `key` sent by the client, as text, or None."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def identity_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's identity: metadata `x-client-id`, or "anonymous" when absent or empty."""
    return metadata_value(context, IDENTITY_KEY) or DEFAULT_IDENTITY


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The client's `x-request-id` when it sent a sensible one, else a fresh random id."""
    given = metadata_value(context, REQUEST_ID_KEY)
    if given and len(given) <= MAX_REQUEST_ID_LENGTH and given.isprintable():
        return given
    return uuid.uuid4().hex[:16]


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as an absolute time.monotonic() value (None when the call has none)."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + max(0.0, float(remaining))
