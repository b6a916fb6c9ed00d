"""Structured server logs (plain or JSON lines) carrying the request and session ids.

Also the one helper for client strings in logs and error messages: `safe` (capped, control
characters escaped) and `short_id` (a session id's prefix, enough to correlate).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

# Set by the transport for the duration of one call; every log line emitted while the call runs
# (in the transport or the core) carries them, so a request can be followed across layers.
REQUEST_ID: ContextVar[str | None] = ContextVar("rnnserve_request_id", default=None)
SESSION_ID: ContextVar[str | None] = ContextVar("rnnserve_session_id", default=None)

# Extra attributes copied into JSON lines. A whitelist, and only scalar values: tensors and
# recurrent state must never reach a log, even if someone passes them in `extra=`.
LOGGED_FIELDS = (
    "method",
    "code",
    "identity",
    "model",
    "version",
    "session_id",
    "steps",
    "step_count",
    "duration_ms",
    "reason",
    "field",
    "peer",
    "port",
    "count",
)
_SCALARS = (str, int, float, bool)
# Client strings (ids, names) shown in a log line or an error message: this many characters.
SAFE_LIMIT = 64
# A session id is a bearer of its session (for its owner's identity): logs at INFO show only
# this many characters of it, which is enough to follow one session through the log.
SESSION_ID_PREFIX = 8
# A JSON line's string extras are capped too (JSON escapes control characters itself).
JSON_STRING_LIMIT = 256
# Request ids are accepted up to 128 printable characters (transport/context.py).
REQUEST_ID_LIMIT = 128
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_PLAIN_FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [request=%(request_id)s session=%(session_id)s] "
    "%(message)s"
)


def escape(text: str) -> str:
    """`text` on one line: newlines, ESC and every other non-printable character (and the
    backslash, so an escape stays unambiguous) written as Python escapes (\\n, \\x1b, \\u2028)."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, one C-speed scan
    return "".join(
        char if char.isprintable() and char != "\\" else _escape_char(char) for char in text
    )


def _escape_char(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(text: str, limit: int = SAFE_LIMIT) -> str:
    """A client-supplied string made fit for a log line or an error message.

    At most `limit` characters of it, control characters escaped; a longer one is cut and says
    how long it was: `"aaaa…(102400 chars)"`. The cut comes first, so a huge string costs O(limit).
    """
    if len(text) <= limit:
        return escape(text)
    return f"{escape(text[:limit])}…({len(text)} chars)"


def short_id(session_id: str) -> str:
    """The prefix of a session id shown at INFO and in error messages: `"Zq3kT0aB…"`."""
    if len(session_id) <= SESSION_ID_PREFIX:
        return escape(session_id)
    return escape(session_id[:SESSION_ID_PREFIX]) + "…"


def _cap(text: str, limit: int) -> str:
    """At most `limit` characters (for JSON, which escapes control characters itself)."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


class ContextFilter(logging.Filter):
    """Adds `request_id` and `session_id` from the current call's context to every record.

    Both are made safe here, for the plain prefix and the JSON fields alike: the request id
    escaped and capped, the session id shortened to its prefix (in full, escaped and capped,
    only on DEBUG records).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_rnnserve_safe", False):
            return True  # a second handler's filter: already done
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        session_id = getattr(record, "session_id", None) or SESSION_ID.get()
        record.request_id = safe(str(request_id), REQUEST_ID_LIMIT) if request_id else "-"
        if not session_id:
            record.session_id = "-"
        elif record.levelno <= logging.DEBUG:
            record.session_id = safe(str(session_id))
        else:
            record.session_id = short_id(str(session_id))
        record._rnnserve_safe = True
        return True


class PlainFormatter(logging.Formatter):
    """The plain one-line format; a message is kept on its line whatever it holds.

    Client strings are made safe where messages are built (`safe`); escaping here too means a
    message that missed it still cannot forge a line or send terminal escapes.
    """

    def __init__(self) -> None:
        super().__init__(_PLAIN_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = "".join(
                char if char.isprintable() else _escape_char(char) for char in record.message
            )
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids and whitelisted scalar extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", *LOGGED_FIELDS):
            value = getattr(record, name, None)
            if isinstance(value, _SCALARS) and value != "-":
                entry[name] = _cap(value, JSON_STRING_LIMIT) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", *, json_format: bool = False) -> None:
    """Route the root logger to stderr, plain or JSON, at `level` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's own logger is chatty at debug level about internals nobody operating us needs.
    logging.getLogger("grpc").setLevel(max(root.level, logging.INFO))
