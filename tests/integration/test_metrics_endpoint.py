"""The metrics endpoint: served on the event loop (no thread per connection), loopback by
default, optionally behind the bearer tokens; bounded request heads, capped connections."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from rnnserve.server.metrics_http import MetricsEndpoint, metrics_endpoint_for
from rnnserve.server.security import SecurityConfigError
from rnnserve.server.settings import Settings
from rnnserve.server.tokens import TokenTable, new_token, token_line
from server_helpers import Running, open_session
from tiny_models import GRU_LM

PATIENCE_S = 30.0  # generous bound on waiting for the server, never a performance threshold


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes; the status, headers and body the server answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), PATIENCE_S)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def _created(body: bytes) -> float:
    """The CreateSession OK count in a text exposition (0 before the first)."""
    sample = b'rnnserve_requests_total{code="OK",method="CreateSession"} '
    for line in body.splitlines():
        if line.startswith(sample):
            return float(line[len(sample) :])
    return 0.0


def _get(path: str = "/metrics", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: metrics", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_metrics_are_served_and_count_requests(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(metrics_port=0)
    port = running.server.metrics_port
    assert port
    # The registry is the process's own: other tests' calls are in it too, so count the change.
    before = _created((await _exchange(port, _get()))[2])
    await open_session(running.stub, GRU_LM)
    status, headers, body = await _exchange(port, _get())
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")  # what Prometheus reads
    assert int(headers["content-length"]) == len(body)
    assert _created(body) == before + 1
    assert (await _exchange(port, _get("/metrics?format=text")))[0] == 200  # query ignored


async def test_content_negotiation_as_prometheus_client_does_it(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(metrics_port=0)
    port = running.server.metrics_port
    assert port
    status, headers, body = await _exchange(port, _get("/metrics", "Accept-Encoding: gzip"))
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"rnnserve_requests_total" in gzip.decompress(body)
    openmetrics = "Accept: application/openmetrics-text; version=1.0.0"
    status, headers, body = await _exchange(port, _get("/metrics", openmetrics))
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_get("/"), 404),
        (_get("/metrics/../admin"), 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9 style: no version
        (b"GET /metrics SPDY/3\r\n\r\n", 400),
        (b"GET /" + b"m" * 5000 + b" HTTP/1.1\r\n\r\n", 414),  # request line over 4 KiB
        (_get("/metrics", "X-Big: " + "v" * 5000), 431),  # one header over 4 KiB
        (_get("/metrics", *(f"X-H{i}: v" for i in range(65))), 431),  # more than 64 headers
    ],
)
async def test_anything_but_a_bounded_get_of_metrics_is_refused(
    serve: Callable[..., Awaitable[Running]], request_bytes: bytes, status: int
) -> None:
    running = await serve(metrics_port=0)
    assert running.server.metrics_port
    answered, headers, _ = await _exchange(running.server.metrics_port, request_bytes)
    assert answered == status
    assert headers["connection"] == "close"
    if status == 405:
        assert headers["allow"] == "GET"


async def test_metrics_auth_asks_for_the_bearer_tokens(
    serve: Callable[..., Awaitable[Running]], tmp_path: Path
) -> None:
    token = new_token()
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(token_line(token, "prometheus") + "\n")
    running = await serve(metrics_port=0, metrics_auth=True, auth_tokens_file=tokens_file)
    port = running.server.metrics_port
    assert port
    refused = [
        _get(),
        _get("/metrics", "Authorization: Bearer not-a-token"),
        _get("/metrics", f"Authorization: Basic {token}"),
        _get("/metrics", f"Authorization: Bearer {token}", f"Authorization: Bearer {token}"),
    ]
    for request in refused:
        status, headers, body = await _exchange(port, request)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert b"rnnserve_" not in body
    status, _, body = await _exchange(port, _get("/metrics", f"Authorization: bearer {token}"))
    assert status == 200 and b"rnnserve_requests_total" in body


def test_metrics_settings_follow_the_exposure_rule(tmp_path: Path) -> None:
    tokens = TokenTable.parse(token_line(new_token(), "prometheus"))

    def settings(**values: object) -> Settings:
        return Settings(**{"model_repository": tmp_path, "metrics_port": 0, **values})  # type: ignore[arg-type]

    with pytest.raises(SecurityConfigError, match="metrics_auth needs auth_tokens_file"):
        metrics_endpoint_for(settings(metrics_auth=True), None)
    with pytest.raises(SecurityConfigError, match=r"non-loopback address '0\.0\.0\.0'"):
        metrics_endpoint_for(settings(metrics_host="0.0.0.0"), None)
    exposed = metrics_endpoint_for(settings(metrics_host="0.0.0.0", metrics_auth=True), tokens)
    opted_in = metrics_endpoint_for(
        settings(metrics_host="0.0.0.0", allow_unauthenticated=True), None
    )
    assert exposed is not None and opted_in is not None
    assert metrics_endpoint_for(settings(metrics_port=-1), None) is None
    default = metrics_endpoint_for(settings(), None)
    assert default is not None and default.host == "127.0.0.1"


async def test_300_idle_connections_cost_no_threads_and_metrics_are_still_served(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(metrics_port=0)
    port = running.server.metrics_port
    assert port
    assert (await _exchange(port, _get()))[0] == 200  # its one worker thread now exists
    threads = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    try:
        for _, writer in idle:
            writer.write(b"GET /metr")  # a request head that never completes
        await asyncio.gather(*(writer.drain() for _, writer in idle))
        status, _, body = await _exchange(port, _get())
        assert status == 200 and b"rnnserve_requests_total" in body
        assert threading.active_count() == threads
    finally:
        for _, writer in idle:
            writer.close()


async def _endpoint(**options: float) -> MetricsEndpoint:
    registry = CollectorRegistry()
    Counter("probe_total", "A counter for the endpoint tests.", registry=registry).inc()
    endpoint = MetricsEndpoint("127.0.0.1", 0, registry=registry, **options)  # type: ignore[arg-type]
    await endpoint.start()
    return endpoint


async def test_open_connections_are_capped_and_the_oldest_idle_one_makes_room() -> None:
    endpoint = await _endpoint(max_connections=8)
    try:
        idle = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(20)]
        # The 12 oldest idle connections were closed by the server to admit newer ones.
        closed = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), PATIENCE_S) for reader, _ in idle[:12])
        )
        assert closed == [b""] * 12
        assert endpoint.open_connections <= 8
        status, _, body = await _exchange(endpoint.port, _get())
        assert status == 200 and b"probe_total 1.0" in body
        assert endpoint.open_connections <= 8
        for _, writer in idle:
            writer.close()
    finally:
        await endpoint.close()


async def test_a_request_head_not_sent_in_time_is_answered_408_and_closed() -> None:
    endpoint = await _endpoint(head_timeout_s=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # the blank line never comes
        data = await asyncio.wait_for(reader.read(), PATIENCE_S)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")
        assert endpoint.open_connections == 0
    finally:
        await endpoint.close()


async def test_concurrent_scrapes_all_get_the_metrics() -> None:
    endpoint = await _endpoint()
    try:
        answers = await asyncio.gather(*(_exchange(endpoint.port, _get()) for _ in range(20)))
        assert [status for status, _, _ in answers] == [200] * 20
        assert all(b"probe_total 1.0" in body for _, _, body in answers)
    finally:
        await endpoint.close()
