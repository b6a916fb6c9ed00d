"""The Prometheus endpoint: HTTP/1.1 on the server's event loop, `GET /metrics` only, bounded.

prometheus_client's own `start_http_server` runs a thread per connection, so idle connections
cost a thread each (300 idle connections, ~300 threads). Here every connection is a coroutine on
the event loop: the request head is read within a time limit and a size limit, one response is
sent and the connection is closed; open connections are capped, and when the cap is reached the
oldest connection still sending its request head makes room for the new one, so idle
connections can never lock a scraper out. Building the exposition (tens of milliseconds of
Python) runs on one worker thread, never on the event loop; requests that arrive while it runs
share the next one.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from rnnserve.server.security import SecurityConfigError, is_loopback
from rnnserve.server.settings import Settings
from rnnserve.server.tokens import TokenTable, bearer_token

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
MAX_LINE_BYTES = 4096  # the request line, and each header line
MAX_HEAD_BYTES = 16_384  # request line and headers together
MAX_HEADERS = 64
HEAD_TIMEOUT_S = 10.0  # to send the whole request head
WRITE_TIMEOUT_S = 10.0  # to take the response
MAX_CONNECTIONS = 128
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def endpoint_tokens(settings: Settings, tokens: TokenTable | None) -> TokenTable | None:
    """The tokens the metrics endpoint asks for (None: open to whoever reaches it).

    Raises SecurityConfigError for `metrics_auth` without a tokens file, and for an open
    endpoint on a non-loopback `metrics_host` unless `allow_unauthenticated` says so (the rule
    the gRPC port follows).
    """
    if settings.metrics_auth:
        if tokens is None:
            raise SecurityConfigError(
                "metrics_auth needs auth_tokens_file: the metrics endpoint asks for the bearer "
                "tokens of that file (--auth-tokens-file, RNNSERVE_AUTH_TOKENS_FILE)"
            )
        return tokens
    if not settings.allow_unauthenticated and not is_loopback(settings.metrics_host):
        raise SecurityConfigError(
            f"refusing to serve metrics on non-loopback address {settings.metrics_host!r} "
            "without authentication: set --metrics-auth (with --auth-tokens-file), bind a "
            "loopback address (--metrics-host 127.0.0.1), or accept an open endpoint "
            "explicitly with --allow-unauthenticated"
        )
    return None


@dataclass(frozen=True)
class Response:
    """What one request is answered."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _text(status: int, message: str, *headers: tuple[str, str]) -> Response:
    return Response(status, (message + "\n").encode(), headers=headers)


class _HeadTooLarge(Exception):
    """The request line or the headers exceed their limits; `status` says which."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(eq=False)
class _Connection:
    """One open connection; `reading` until its request head has arrived."""

    writer: asyncio.StreamWriter
    reading: bool = True
    task: asyncio.Task[Any] | None = field(default=None)


class MetricsEndpoint:
    """Serves `GET /metrics` (the registry's exposition) on `host:port`; port 0 picks one.

    With `tokens`, a request must carry `Authorization: Bearer <token>` that the table knows
    (401 otherwise). Anything but GET is 405, any other path 404, a request line or header over
    its limit 414 / 431, a head not sent within `head_timeout_s` 408.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tokens: TokenTable | None = None,
        registry: CollectorRegistry = REGISTRY,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.host, self.port = host, port
        self._tokens = tokens
        self._registry = registry
        self._max_connections = max_connections
        self._head_timeout_s = head_timeout_s
        self._write_timeout_s = write_timeout_s
        self._server: asyncio.Server | None = None
        # Insertion order is age: the first connection still reading is the one to evict.
        self._connections: dict[asyncio.StreamWriter, _Connection] = {}
        self._executor: ThreadPoolExecutor | None = None
        # Exposition builds: the one running, and the next one per format (see _exposition).
        self._running: asyncio.Future[bytes] | None = None
        self._waiting: dict[tuple[str, bool], asyncio.Future[bytes]] = {}

    @property
    def open_connections(self) -> int:
        """Connections now open (at most `max_connections`)."""
        return len(self._connections)

    async def start(self) -> int:
        """Bind and serve; returns the bound port. OSError if the address cannot be bound."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnserve-metrics")
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_LINE_BYTES
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        tasks = [c.task for c in self._connections.values() if c.task is not None]
        for connection in list(self._connections.values()):
            connection.writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks)
        for pending in (*self._waiting.values(), self._running):
            if pending is not None:
                pending.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer, task=asyncio.current_task())
        if not self._admit(connection):
            await self._send(writer, _text(503, "too many connections"))
            return
        try:
            response = await self._answer(reader, connection)
            if response is not None:
                await self._send(writer, response)
        finally:
            self._connections.pop(writer, None)  # already gone if it was evicted

    def _admit(self, connection: _Connection) -> bool:
        """Make room for a new connection by evicting the oldest one still reading its head."""
        if len(self._connections) >= self._max_connections:
            oldest = next((c for c in self._connections.values() if c.reading), None)
            if oldest is None:  # every connection is being answered: refuse this one
                return False
            oldest.writer.transport.abort()  # its pending read ends; its task cleans up
            del self._connections[oldest.writer]
        self._connections[connection.writer] = connection
        return True

    async def _answer(
        self, reader: asyncio.StreamReader, connection: _Connection
    ) -> Response | None:
        """The response to the connection's request; None when there is nobody to answer."""
        try:
            async with asyncio.timeout(self._head_timeout_s):
                request_line, headers = await _read_head(reader)
        except TimeoutError:
            return _text(408, "request head not received in time")
        except _HeadTooLarge as err:
            return _text(err.status, "request head too large")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None  # the client went away (or was evicted) before its request was complete
        connection.reading = False
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "malformed request line")
        method, target, _ = parts
        if method != "GET":
            return _text(405, "only GET is served", ("Allow", "GET"))
        if target.partition("?")[0] != METRICS_PATH:
            return _text(404, f"not found: the metrics are at {METRICS_PATH}")
        if self._tokens is not None and not _authorized(headers, self._tokens):
            challenge = ("WWW-Authenticate", 'Bearer realm="rnnserve-metrics"')
            return _text(401, "a valid 'Authorization: Bearer <token>' is required", challenge)
        # Content negotiation as prometheus_client's own server does it (text 0.0.4 by default,
        # OpenMetrics when asked for, gzip when accepted).
        encoder, content_type = choose_encoder(_one(headers, "accept"))
        compress = gzip_accepted(_one(headers, "accept-encoding"))
        body = await self._exposition(encoder, content_type, compress)
        encoding = (("Content-Encoding", "gzip"),) if compress else ()
        return Response(200, body, content_type=content_type, headers=encoding)

    async def _send(self, writer: asyncio.StreamWriter, response: Response) -> None:
        """Write the response and close; a client that does not take it is cut off."""
        try:
            writer.write(response.encode())
            async with asyncio.timeout(self._write_timeout_s):
                await writer.drain()
            writer.close()
            async with asyncio.timeout(self._write_timeout_s):
                await writer.wait_closed()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()

    async def _exposition(
        self, encoder: Callable[[CollectorRegistry], bytes], content_type: str, compress: bool
    ) -> bytes:
        """The registry's exposition in the negotiated format, built on the worker thread.

        One build runs at a time; requests arriving meanwhile share the next build of their
        format, so no answer is older than its request and a flood of requests costs one build
        at a time.
        """
        key = (content_type, compress)
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = asyncio.ensure_future(self._build(key, encoder, compress))
            self._waiting[key] = waiting
        return await asyncio.shield(waiting)

    async def _build(
        self, key: tuple[str, bool], encoder: Callable[[CollectorRegistry], bytes], compress: bool
    ) -> bytes:
        while self._running is not None and not self._running.done():
            await asyncio.wait([self._running])
        self._running = self._waiting.pop(key)
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _encode, encoder, self._registry, compress
        )


def _encode(
    encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry, compress: bool
) -> bytes:
    output = encoder(registry)
    return gzip.compress(output) if compress else output


def _one(headers: dict[str, list[str]], name: str) -> str:
    """A header's value ("" when absent; the first when repeated)."""
    values = headers.get(name)
    return values[0] if values else ""


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, list[str]]]:
    """The request line and the headers (lower-case names), within the size limits."""
    request_line = await _read_line(reader, 414)
    headers: dict[str, list[str]] = {}
    total, count = len(request_line), 0
    while line := await _read_line(reader, 431):
        total += len(line)
        count += 1
        if total > MAX_HEAD_BYTES or count > MAX_HEADERS:
            raise _HeadTooLarge(431)
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return request_line, headers


async def _read_line(reader: asyncio.StreamReader, too_long: int) -> str:
    """One line without its line ending; `too_long` is the status for a line over the limit."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _HeadTooLarge(too_long) from None
    return raw.rstrip(b"\r\n").decode("latin-1")


def _authorized(headers: dict[str, list[str]], tokens: TokenTable) -> bool:
    """True for exactly one `Authorization: Bearer <token>` header with a known token."""
    values = headers.get("authorization", [])
    if len(values) != 1:
        return False
    token = bearer_token(values[0])
    return token is not None and tokens.principal_of(token) is not None


def metrics_endpoint_for(settings: Settings, tokens: TokenTable | None) -> MetricsEndpoint | None:
    """The endpoint `settings` ask for (not started), or None when metrics_port is unset/-1."""
    port = settings.metrics_port
    if port is None or port < 0:
        return None
    return MetricsEndpoint(settings.metrics_host, port, tokens=endpoint_tokens(settings, tokens))
