"""Structured logs: JSON lines with request and session ids, never tensors or state."""

from __future__ import annotations

import json
import logging

import numpy as np
from rnnserve.server.logs import REQUEST_ID, SESSION_ID, ContextFilter, JsonFormatter


def _format(record: logging.LogRecord) -> dict[str, object]:
    ContextFilter().filter(record)
    return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("rnnserve.test", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_json_line_carries_the_call_context() -> None:
    request_token, session_token = REQUEST_ID.set("req-1"), SESSION_ID.set("sess-1")
    try:
        entry = _format(_record("step done", model="tiny-lm", steps=3))
    finally:
        REQUEST_ID.reset(request_token)
        SESSION_ID.reset(session_token)
    assert entry["message"] == "step done" and entry["level"] == "info"
    assert entry["request_id"] == "req-1" and entry["session_id"] == "sess-1"
    assert entry["model"] == "tiny-lm" and entry["steps"] == 3


def test_tensors_and_unknown_extras_never_reach_the_log() -> None:
    state = np.full((2, 8), 0.123456, dtype=np.float32)
    line = JsonFormatter().format(_record("x", model=state, h0=state, steps=state))
    assert "0.123" not in line
    assert set(json.loads(line)) == {"ts", "level", "logger", "message"}


def test_outside_a_call_ids_are_absent() -> None:
    entry = _format(_record("idle"))
    assert "request_id" not in entry and "session_id" not in entry


def test_exceptions_are_included_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = _format(record)
    assert "ValueError: boom" in str(entry["exception"])
