"""Request metrics the transport records (the core records queue, compute and session metrics)."""

from __future__ import annotations

from rnnserve.server.metrics import REQUEST_LATENCY, REQUESTS

# Long-lived calls whose duration says nothing about service speed: only their count is kept,
# while each in-stream message is timed on its own ("Stream.step", "Stream.open", ...).
UNTIMED_METHODS = frozenset({"Stream"})


def record_call(method: str, code: str, seconds: float) -> None:
    """Count one finished call (or in-stream message) by method and status code, and time it."""
    REQUESTS.labels(method=method, code=code).inc()
    if method not in UNTIMED_METHODS:
        REQUEST_LATENCY.labels(method=method).observe(seconds)
