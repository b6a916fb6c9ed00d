"""Who may call: bearer tokens or client certificates -> a principal, checked by an interceptor
before any handler runs, and the per-principal cap on concurrent calls (TLS itself: tls.py).

Credentials:
- `authorization: Bearer <token>` (exactly one such header) when `auth_tokens_file` is set; the
  token's principal comes from the tokens file (tokens.py).
- with mutual TLS (`tls_client_ca_file`), the verified client certificate: principal
  `cert:<common name>`, the name percent-encoded so that it holds no `/` or `:`.
When both are configured a call may use either; a bearer header, when sent, must be valid (a bad
token never falls back to the certificate). A call with no valid credential is refused with
UNAUTHENTICATED before its request is even parsed. Health and reflection stay open when
`auth_open_health` / `auth_open_reflection` say so.

Every other call counts against its principal's `max_calls_per_principal` while it runs (a stream
for as long as it is open); with authentication off the cap is per identity (`x-client-id`).
"""

from __future__ import annotations

import inspect
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from contextvars import Token
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from rnnserve.server import errors as domain
from rnnserve.server.logs import REQUEST_ID
from rnnserve.server.security import check_exposure
from rnnserve.server.settings import Settings
from rnnserve.server.tokens import TokenTable, bearer_token
from rnnserve.server.transport.context import (
    CALL_IDENTITY,
    client_id_from,
    compose_identity,
    metadata_values,
    request_id_of,
)
from rnnserve.server.transport.errors import Unauthenticated, abort, report
from rnnserve.server.transport.observe import record_call

AUTHORIZATION_KEY = "authorization"
CERT_PRINCIPAL_PREFIX = "cert:"
HEALTH_SERVICES = frozenset({health_pb2.DESCRIPTOR.services_by_name["Health"].full_name})
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
# How soon a caller at its call cap may try again (one of its own calls has to end first).
CALL_CAP_RETRY_S = 0.1


class CallLimitExceeded(domain.Overloaded):
    """A principal already runs `max_calls_per_principal` calls (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class AuthPolicy:
    """What the interceptor enforces, read once from Settings."""

    tokens: TokenTable | None
    client_certificates: bool
    open_services: frozenset[str]
    max_calls_per_principal: int
    max_id_length: int

    @property
    def enabled(self) -> bool:
        """True when every call (outside the open services) must bring a credential."""
        return self.tokens is not None or self.client_certificates

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        """Load the tokens file (if any); raises SecurityConfigError when it cannot be used."""
        tokens = None
        if settings.auth_tokens_file is not None:
            tokens = TokenTable.load(settings.auth_tokens_file)
        open_services: frozenset[str] = frozenset()
        if settings.auth_open_health:
            open_services |= HEALTH_SERVICES
        if settings.auth_open_reflection:
            open_services |= REFLECTION_SERVICES
        return cls(
            tokens=tokens,
            client_certificates=settings.tls_client_ca_file is not None,
            open_services=open_services,
            max_calls_per_principal=settings.max_calls_per_principal,
            max_id_length=settings.max_id_length,
        )


def check_listener(settings: Settings, policy: AuthPolicy) -> None:
    """The exposure rule for the gRPC port (security.check_exposure) under `policy`."""
    check_exposure(
        settings.host,
        authenticated=policy.enabled,
        allow_unauthenticated=settings.allow_unauthenticated,
    )


def bearer_principal(metadata: Iterable[Any] | None, tokens: TokenTable) -> str | None:
    """The principal of the call's bearer token; None when no `authorization` header was sent.

    Raises Unauthenticated for two headers, a header that is not `Bearer <token>`, or a token the
    table does not know. Messages never repeat the header.
    """
    values = metadata_values(metadata, AUTHORIZATION_KEY)
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(f"{len(values)} authorization headers; send exactly one")
    token = bearer_token(values[0])
    if token is None:
        raise Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
    principal = tokens.principal_of(token)
    if principal is None:
        raise Unauthenticated("invalid bearer token")
    return principal


def certificate_principal(context: Any) -> str | None:
    """`cert:<common name>` of the call's verified client certificate, or None without one."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or ()
    if not names:
        return None
    name = names[0]
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    # quote() keeps letters, digits and "_.-~": the principal can hold no "/" or ":".
    return CERT_PRINCIPAL_PREFIX + urllib.parse.quote(text, safe="@+")


def missing_credential_message(policy: AuthPolicy) -> str:
    """What an unauthenticated caller is told to send."""
    if policy.tokens is not None and policy.client_certificates:
        return "no credentials: send 'authorization: Bearer <token>' or a client certificate"
    if policy.tokens is not None:
        return "no credentials: send 'authorization: Bearer <token>'"
    return "no credentials: connect with a client certificate signed by the server's client CA"


@dataclass
class _Ticket:
    """One admitted call: whose slot it holds and the identity context to restore at its end."""

    key: str
    identity_token: Token[str | None]


_SLOTS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


@dataclass(frozen=True)
class _Method:
    """What the gate needs to know of one registered method, worked out on its first call."""

    handler: Any  # the grpc.RpcMethodHandler this describes
    name: str  # "Step": the method's short name, as in logs and metrics
    open: bool  # in an open service (health, reflection): no credential, no call slot
    slot: str  # the handler field holding its behaviour ("unary_unary", ...)
    behaviour: Callable[..., Any]
    yields: bool  # response-streaming by iteration (not by context.write)

    @classmethod
    def of(cls, path: str, handler: Any, open_services: frozenset[str]) -> _Method:
        service, _, name = path.lstrip("/").partition("/")
        slot = _SLOTS[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behaviour = getattr(handler, slot)
        yields = bool(handler.response_streaming) and not inspect.iscoroutinefunction(behaviour)
        return cls(handler, name, service in open_services, slot, behaviour, yields)


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """The server interceptor: authenticates each call, settles its identity and holds a slot of
    its principal's call cap while the handler runs."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy
        self._calls: dict[str, int] = {}
        # Per registered method path; unknown paths (no handler) are never added.
        self._methods: dict[str, _Method] = {}

    def calls_of(self, key: str) -> int:
        """Calls now running for a principal (or, without authentication, an identity)."""
        return self._calls.get(key, 0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        path: str = handler_call_details.method
        method = self._methods.get(path)
        if method is None or method.handler is not handler:
            method = self._methods[path] = _Method.of(path, handler, self.policy.open_services)
        if method.open:
            return handler
        metadata = handler_call_details.invocation_metadata
        try:
            principal = None
            if self.policy.tokens is not None:
                principal = bearer_principal(metadata, self.policy.tokens)
            client_id = client_id_from(metadata, self.policy.max_id_length)
        except domain.RnnServeError as err:
            return _refusing(method, err)
        return self._admitting(method, principal, client_id)

    def _admit(self, context: Any, principal: str | None, client_id: str | None) -> _Ticket:
        """Settle the call's identity and take a slot; raises Unauthenticated or the cap error."""
        if principal is None and self.policy.enabled:
            if self.policy.client_certificates:
                principal = certificate_principal(context)
            if principal is None:
                raise Unauthenticated(missing_credential_message(self.policy))
        identity = compose_identity(principal, client_id)
        key = identity if principal is None else principal
        running = self._calls.get(key, 0)
        if running >= self.policy.max_calls_per_principal:
            raise CallLimitExceeded(
                f"too many concurrent calls for this caller: at most "
                f"{self.policy.max_calls_per_principal} (max_calls_per_principal)",
                retry_after_s=CALL_CAP_RETRY_S,
            )
        self._calls[key] = running + 1
        return _Ticket(key, CALL_IDENTITY.set(identity))

    def _release(self, ticket: _Ticket) -> None:
        left = self._calls[ticket.key] - 1
        if left:
            self._calls[ticket.key] = left
        else:
            del self._calls[ticket.key]  # no entry per idle caller: bounded memory
        # try/except, not contextlib.suppress: this runs on every call, and is cheaper so.
        try:  # noqa: SIM105
            CALL_IDENTITY.reset(ticket.identity_token)
        except ValueError:  # an async generator finalised in another context
            pass

    def _admitting(
        self, method: _Method, principal: str | None, client_id: str | None
    ) -> grpc.RpcMethodHandler:
        """The method's handler with its behaviour run inside an admitted call."""
        behaviour, name = method.behaviour, method.name

        if method.yields:

            async def stream_out(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    ticket = self._admit(context, principal, client_id)
                except domain.RnnServeError as err:
                    await _refuse(context, name, err)
                    return
                try:
                    responses = _as_async_iterator(behaviour(request, context))
                    async with aclosing(responses) as out:
                        async for response in out:
                            yield response
                finally:
                    self._release(ticket)

            return method.handler._replace(**{method.slot: stream_out})

        async def run(request: Any, context: Any) -> Any:
            try:
                ticket = self._admit(context, principal, client_id)
            except domain.RnnServeError as err:
                await _refuse(context, name, err)
                return None
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self._release(ticket)

        return method.handler._replace(**{method.slot: run})


def _refusing(method: _Method, err: domain.RnnServeError) -> grpc.RpcMethodHandler:
    """The method's handler refusing the call with `err`, without parsing its request."""
    name = method.name

    async def refuse(request: Any, context: Any) -> None:
        await _refuse(context, name, err)

    # No deserializer: the refused request's bytes are never parsed. A coroutine behaviour
    # serves every kind of method (grpc awaits it, even for a streaming response).
    return method.handler._replace(**{method.slot: refuse, "request_deserializer": None})


async def _refuse(context: Any, name: str, err: domain.RnnServeError) -> None:
    """End a call the gate refused, through the one failure report (logged, counted)."""
    started = time.perf_counter()
    token = REQUEST_ID.set(request_id_of(context))
    try:
        failure = report(err, name)
        record_call(name, failure.code_name, time.perf_counter() - started)
        await abort(context, err, failure)
    finally:
        REQUEST_ID.reset(token)


async def _as_async_iterator(responses: Any) -> AsyncGenerator[Any, None]:
    """Iterate a handler's responses, whether it returned an async or a plain iterator."""
    if hasattr(responses, "aclose"):
        async with aclosing(responses) as stream:
            async for response in stream:
                yield response
    elif hasattr(responses, "__aiter__"):
        async for response in responses:
            yield response
    else:
        for response in responses:
            yield response
