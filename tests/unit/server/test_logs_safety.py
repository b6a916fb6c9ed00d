"""Client strings in logs and error messages: one line each, capped, control characters escaped."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from rnnserve.server.errors import SequenceNotStarted, SessionNotFound
from rnnserve.server.logs import (
    REQUEST_ID,
    SESSION_ID,
    ContextFilter,
    JsonFormatter,
    PlainFormatter,
    safe,
    short_id,
)

FORGED = "abc\n2026-01-01 00:00:00,000 INFO    rnnserve.server.sessions [request=- session=-] ok"
HUGE = "A" * 102_400  # 100 KB


def test_safe_escapes_every_control_character() -> None:
    assert safe("a\nb\rc\td\x1be") == "a\\nb\\rc\\td\\x1be"
    assert safe("x\u2028y\u202ez\x7f") == "x\\u2028y\\u202ez\\x7f"  # line separator, bidi, DEL
    assert safe("back\\slash") == "back\\\\slash"  # an escape in the input stays distinguishable
    assert safe("plain-id_09 é 😀") == "plain-id_09 é 😀"  # printable text is left alone


def test_safe_caps_a_long_string_and_says_how_long_it_was() -> None:
    shown = safe(HUGE)
    assert shown == "A" * 64 + "…(102400 chars)"
    assert safe("\n" * 1000, limit=4) == "\\n\\n\\n\\n…(1000 chars)"


def test_short_id_is_a_prefix() -> None:
    assert short_id("Zq3kT0aBcdefghijklmnopqrstuvwxyz") == "Zq3kT0aB…"
    assert short_id("short") == "short"
    assert short_id("ab\ncdefghijk") == "ab\\ncdefg…"


def test_error_messages_are_bounded_and_on_one_line() -> None:
    for err in (
        SessionNotFound(FORGED),
        SessionNotFound(HUGE, "closed"),
        SequenceNotStarted(HUGE, "tiny-gru-lm", "closed"),
        SequenceNotStarted(FORGED, FORGED),
    ):
        assert "\n" not in err.message and len(err.message) < 400


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing to two buffers at once, one plain and one JSON, as the server does."""
    logger = logging.getLogger("rnnserve.test.safety")
    plain, structured = io.StringIO(), io.StringIO()
    handlers = []
    for stream, formatter in ((plain, PlainFormatter()), (structured, JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.addFilter(ContextFilter())
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        handlers.append(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, plain, structured
    for handler in handlers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("session_id", [FORGED, "id\x1b[2J\x1b[31mred", HUGE])
def test_a_hostile_session_id_makes_one_capped_line_in_both_formats(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO], session_id: str
) -> None:
    logger, plain, structured = captured
    tokens = REQUEST_ID.set("req-1"), SESSION_ID.set(session_id)
    try:
        # What the transport logs for a refused call: the error's message, under the call context.
        logger.info("Step -> NOT_FOUND: %s", SessionNotFound(session_id).message)
    finally:
        REQUEST_ID.reset(tokens[0])
        SESSION_ID.reset(tokens[1])
    line = plain.getvalue()
    assert line.count("\n") == 1 and "\x1b" not in line and len(line) < 300
    assert f"session={short_id(session_id)}]" in line
    entries = structured.getvalue().splitlines()
    assert len(entries) == 1 and len(entries[0]) < 400
    entry = json.loads(entries[0])
    assert entry["session_id"] == short_id(session_id)
    assert "\n" not in entry["message"] and "\x1b" not in entry["message"]


def test_info_shows_a_session_prefix_and_debug_the_whole_id(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, plain, _ = captured
    session_id = "Zq3kT0aBcdefghijklmnopqrstuvwxyz"
    token = SESSION_ID.set(session_id)
    try:
        logger.info("stepped")
        logger.debug("stepped")
    finally:
        SESSION_ID.reset(token)
    info, debug = plain.getvalue().splitlines()
    assert "session=Zq3kT0aB…]" in info and session_id not in info
    assert f"session={session_id}]" in debug


def test_a_message_that_missed_safe_still_stays_on_its_line(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, plain, structured = captured
    logger.warning("client said %s", "hi\nFORGED LINE\x1b[0m")
    assert plain.getvalue().count("\n") == 1 and "hi\\nFORGED LINE\\x1b[0m" in plain.getvalue()
    assert json.loads(structured.getvalue())["message"] == "client said hi\nFORGED LINE\x1b[0m"


def test_json_string_extras_are_capped(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, _, structured = captured
    logger.info("refused", extra={"model": HUGE})
    entry = json.loads(structured.getvalue())
    assert entry["model"].endswith("…(102400 chars)") and len(entry["model"]) < 300
