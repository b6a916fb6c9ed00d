"""Domain errors of the serving core; no transport codes here (transport/errors.py maps them)."""

from __future__ import annotations

from rnnserve.server.logs import safe, short_id


class RnnServeError(Exception):
    """Base of every error the core raises on purpose; `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def with_field_prefix(self, prefix: str) -> RnnServeError:
        """Put the field path under `prefix`: "step" + "tokens.ids[3]" -> "step.tokens.ids[3]"."""
        if not self.field:
            self.field = prefix or self.field
        elif prefix:
            separator = "" if self.field.startswith("[") else "."
            self.field = f"{prefix}{separator}{self.field}"
        return self


class InvalidInput(RnnServeError):
    """The request is malformed: bad dtype, shape, width, token id, NaN, empty, too long."""


class SequenceNotStarted(InvalidInput):
    """A request continues a client-named sequence that has no live session (Triton's rule).

    Sequences are scoped to their caller, so `reason` (why the sequence is gone) only ever
    reaches the identity that owned it.
    """

    def __init__(self, sequence: str, model: str, reason: str = "unknown") -> None:
        why = {
            "unknown": "",
            "expired": " (it expired after being idle longer than its TTL)",
            "closed": " (it was ended)",
            "evicted": " (it was evicted)",
        }.get(reason, f" ({safe(reason)})")
        super().__init__(
            f"inference request for sequence {safe(sequence)} to model '{safe(model)}' must "
            f"specify the START flag on the first request of the sequence{why}",
            field="parameters.sequence_start",
        )
        self.reason = reason


class ModelNotFound(RnnServeError):
    """No model (or no such version of it) is served."""


class SessionNotFound(RnnServeError):
    """No live session of this id for the caller.

    `reason` (expired, evicted, closed) says why a session is gone, and is given only to the
    identity that owned it. Anyone else — and anyone asking for an id that never existed — gets
    the same message with no reason, so an error never tells whether someone else's session
    exists (no existence oracle).
    """

    def __init__(self, session_id: str, reason: str | None = None) -> None:
        messages = {
            "expired": "expired after being idle longer than its TTL",
            "evicted": "was evicted to make room for new sessions",
            "closed": "was closed",
        }
        why = "not found" if reason is None else messages.get(reason, safe(reason))
        super().__init__(f"session '{short_id(session_id)}' {why}", field="session_id")
        self.session_id = session_id
        self.reason = reason


class ModelNotStreamable(RnnServeError):
    """Sessions (streaming, stepping, generation) on a bidirectional / whole-sequence model."""


class NotALanguageModel(RnnServeError):
    """Generation asked of a model that does not predict tokens."""


class SessionBusy(RnnServeError):
    """A step arrived while another step of the same session was running, or out of order."""


class CapacityExceeded(RnnServeError):
    """No room for another session (max_sessions, or the caller's max_sessions_per_principal)."""


class Overloaded(RnnServeError):
    """The scheduler's queue is full; retry after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float = 0.05) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidSnapshot(RnnServeError):
    """A snapshot is corrupted, forged, of an unknown format, or for another model/weights.

    `reason` says which: format (not ours, or another format version), corrupt (checksum,
    truncation, a header field out of bounds), signature (unsigned where a signature is required,
    or signed with another secret), model (a model, version, weights or state shapes this server
    does not serve).
    """

    def __init__(self, message: str, *, field: str | None = None, reason: str = "corrupt") -> None:
        super().__init__(message, field=field)
        self.reason = reason


class SnapshotSecretRequired(RnnServeError):
    """A snapshot import on an exposed server (not loopback) that has no signing secret."""


class DeadlineExceeded(RnnServeError):
    """The step's deadline passed while it waited; the state is untouched."""


class ShuttingDown(RnnServeError):
    """The server is draining and accepts no new work."""


class StateTierUnavailable(RnnServeError):
    """The shared state tier (Redis) did not answer; the step's state was rolled back. Retry."""


class SessionMoved(RnnServeError):
    """Another process owns the session now (its lease, or newer state, is in the state tier).

    This process dropped its copy and changed nothing; the same call, retried, reaches the owner
    (through the proxy) or, once the owner's lease has lapsed, loads the session here.
    """


class SessionStateInvalid(RnnServeError):
    """A session's record in the state tier does not parse, fails its signature, or is for a
    model version (or weights) this server does not serve; only that session is affected."""
