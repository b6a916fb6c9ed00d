"""What every call of one client carries and how long it may take and retry, without I/O."""

from __future__ import annotations

import time

from rnnserve.client._credentials import bearer_metadata
from rnnserve.client._errors import RnnServeError
from rnnserve.client._retry import RetryPolicy

CLIENT_ID_KEY = "x-client-id"
#: The header naming the session a call belongs to. The server sets it on the response that
#: creates a session and the client sends it on every later call of that session, so a proxy in
#: front of several server processes can route them all to the one holding the session
#: (deploy/haproxy/haproxy.cfg: a stick table keyed on it).
SESSION_HEADER = "x-rnnserve-session"


def call_metadata(client_id: str | None, token: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the bearer token (when given) and the client id (with
    authentication on the server, a sub-identity under the token's principal)."""
    identity = ((CLIENT_ID_KEY, client_id),) if client_id else ()
    return bearer_metadata(token) + identity


def session_metadata(session_id: str | None) -> tuple[tuple[str, str], ...]:
    """The routing header of a call that belongs to ``session_id`` (none without a session)."""
    return ((SESSION_HEADER, session_id),) if session_id else ()


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (``None``: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class CallPolicy:
    """One client's call settings, shared by its Rpc helper: credential and identity metadata,
    default deadline and retry policy. The client's ``timeout`` and ``retry`` read and write
    these."""

    def __init__(
        self,
        client_id: str | None,
        timeout: float | None,
        retry: RetryPolicy,
        token: str | None = None,
    ) -> None:
        self.metadata = call_metadata(client_id, token)
        self.timeout = timeout
        self.retry = retry

    def timeout_for(self, timeout: float | None) -> float | None:
        """A call's own timeout, or the client's default."""
        return self.timeout if timeout is None else timeout

    def deadline(self, timeout: float | None) -> float | None:
        """The ``time.monotonic()`` deadline of a call starting now."""
        timeout = self.timeout_for(timeout)
        return None if timeout is None else time.monotonic() + timeout

    def attempts(self, timeout: float | None, idempotent: bool) -> CallAttempts:
        """The tries of one unary call starting now."""
        return CallAttempts(self.retry, self.deadline(timeout), idempotent)


class CallAttempts:
    """The tries of one unary call: how long the current one may take, and how long to wait
    before the next one (if any)."""

    def __init__(self, retry: RetryPolicy, deadline: float | None, idempotent: bool) -> None:
        self._retry = retry
        self._deadline = deadline
        self._idempotent = idempotent
        self._attempt = 1

    def remaining(self) -> float | None:
        """Seconds left for this try (``None``: no deadline)."""
        return remaining(self._deadline)

    def wait_after(self, error: RnnServeError) -> float:
        """Seconds to wait before retrying after ``error``; raises ``error`` when it is not to be
        retried (not idempotent, not a retried code, out of attempts or of time)."""
        if not (self._idempotent and self._retry.should_retry(error.code, self._attempt)):
            raise error
        wait = self._retry.backoff(self._attempt)
        if self._deadline is not None and time.monotonic() + wait >= self._deadline:
            raise error
        self._attempt += 1
        return wait
