"""Request metrics the transport records (the core records queue, compute and session metrics)."""

from __future__ import annotations

from typing import Any

from rnnserve.server.metrics import REQUEST_LATENCY, REQUESTS

# Long-lived calls whose duration says nothing about service speed: only their count is kept,
# while each in-stream message is timed on its own ("Stream.step", "Stream.open", ...).
UNTIMED_METHODS = frozenset({"Stream"})

# Labelled children, looked up once: `labels()` costs a lock and a dict build on every message.
_counters: dict[tuple[str, str], Any] = {}
_histograms: dict[str, Any] = {}


def record_call(method: str, code: str, seconds: float) -> None:
    """Count one finished call (or in-stream message) by method and status code, and time it."""
    counter = _counters.get((method, code))
    if counter is None:
        counter = _counters[(method, code)] = REQUESTS.labels(method=method, code=code)
    counter.inc()
    if method in UNTIMED_METHODS:
        return
    histogram = _histograms.get(method)
    if histogram is None:
        histogram = _histograms[method] = REQUEST_LATENCY.labels(method=method)
    histogram.observe(seconds)
