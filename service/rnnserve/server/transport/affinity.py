"""The session routing header: a response that creates a session names it, for a proxy in front."""

from __future__ import annotations

from typing import Any

#: Set on the initial metadata of a response that creates a session (CreateSession,
#: ImportState, a Stream's `open`, a Generate on a new session). A proxy in front of several
#: server processes stores "session -> process" from it (HAProxy: `stick store-response
#: res.hdr(x-rnnserve-session)`), and the client library sends the same header on every later
#: call of the session (`stick on req.hdr(x-rnnserve-session)`), so they reach that process.
SESSION_HEADER = "x-rnnserve-session"


def session_header(session_id: str) -> tuple[tuple[str, str], ...]:
    """The routing header naming `session_id`, as gRPC metadata."""
    return ((SESSION_HEADER, session_id),)


async def announce_session(context: Any, session_id: str) -> None:
    """Send `session_id`'s routing header as the call's initial metadata (before its reply)."""
    await context.send_initial_metadata(session_header(session_id))
