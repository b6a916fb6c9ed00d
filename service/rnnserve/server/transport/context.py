"""What a handler learns from a gRPC call besides its request: identity, request id, deadline.

Identity: with authentication on, a call's identity is its authenticated principal (a bearer
token's principal, or `cert:<common name>` for a client certificate), and `x-client-id` only
names a sub-identity under it, `<principal>/<x-client-id>`; a principal never contains `/`, so no
header can make one principal's identity equal another's. Without authentication the identity is
`x-client-id`, or "anonymous" when absent. The auth interceptor (transport/auth.py) works the
identity out once per call, before the handler runs, and leaves it in CALL_IDENTITY.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc
from rnnserve.server.errors import InvalidInput

IDENTITY_KEY = "x-client-id"
IDENTITY_FIELD = "metadata." + IDENTITY_KEY
REQUEST_ID_KEY = "x-request-id"
DEFAULT_IDENTITY = "anonymous"
SUB_IDENTITY_SEPARATOR = "/"
# Settings.max_id_length's default, for servicers run without the interceptor (unit tests).
DEFAULT_MAX_ID_LENGTH = 128
# Longer client-chosen ids are replaced: they end up in every log line of the call.
MAX_REQUEST_ID_LENGTH = 128

# Set by the auth interceptor for the duration of one call (None outside an intercepted call).
CALL_IDENTITY: ContextVar[str | None] = ContextVar("rnnserve_call_identity", default=None)


def metadata_values(metadata: Iterable[Any] | None, key: str) -> list[str]:
    """Every value of metadata `key` in `metadata` (invocation metadata items), as text."""
    values = []
    for item in metadata or ():
        # grpc gives (key, value) tuples; other contexts may give objects with .key and .value.
        name, value = item if isinstance(item, tuple) else (item.key, item.value)
        if name == key:
            values.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return values


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of metadata `key` sent by the client, as text, or None."""
    values = metadata_values(context.invocation_metadata(), key)
    return values[0] if values else None


def client_id_from(
    metadata: Iterable[Any] | None, max_length: int = DEFAULT_MAX_ID_LENGTH
) -> str | None:
    """The caller's `x-client-id` (None when absent or empty), validated.

    Raises InvalidInput (field `metadata.x-client-id`) when it is sent more than once, is longer
    than `max_length` characters, or holds a character that is not printable. The message never
    repeats the value.
    """
    values = metadata_values(metadata, IDENTITY_KEY)
    if len(values) > 1:
        raise InvalidInput(f"sent {len(values)} times; send it at most once", field=IDENTITY_FIELD)
    if not values or not values[0]:
        return None
    value = values[0]
    if len(value) > max_length:
        raise InvalidInput(
            f"{len(value)} characters; at most {max_length} are allowed", field=IDENTITY_FIELD
        )
    if not value.isprintable():
        raise InvalidInput("holds a non-printable character", field=IDENTITY_FIELD)
    return value


def compose_identity(principal: str | None, client_id: str | None) -> str:
    """A call's identity from its authenticated principal (None: authentication off) and its
    validated `x-client-id`."""
    if principal is None:
        return client_id or DEFAULT_IDENTITY
    return f"{principal}{SUB_IDENTITY_SEPARATOR}{client_id}" if client_id else principal


def identity_of(context: grpc.aio.ServicerContext) -> str:
    """The identity sessions are owned by: the one the auth interceptor settled for this call,
    else (no interceptor) the validated `x-client-id` or "anonymous"."""
    settled = CALL_IDENTITY.get()
    if settled is not None:
        return settled
    return compose_identity(None, client_id_from(context.invocation_metadata()))


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
