"""Structured server logs (plain or JSON lines) carrying the request and session ids."""

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
_PLAIN_FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [request=%(request_id)s session=%(session_id)s] "
    "%(message)s"
)


class ContextFilter(logging.Filter):
    """Adds `request_id` and `session_id` from the current call's context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get() or "-"
        if getattr(record, "session_id", None) is None:
            record.session_id = SESSION_ID.get() or "-"
        return True


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
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", *, json_format: bool = False) -> None:
    """Route the root logger to stderr, plain or JSON, at `level` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(_PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's own logger is chatty at debug level about internals nobody operating us needs.
    logging.getLogger("grpc").setLevel(max(root.level, logging.INFO))
