"""SessionManager: session ids, ownership, idle TTL, capacity, one step at a time, tombstones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from rnnserve.server import metrics
from rnnserve.server.domain import SessionView
from rnnserve.server.errors import (
    CapacityExceeded,
    SequenceNotStarted,
    SessionBusy,
    SessionNotFound,
)
from rnnserve.server.logs import short_id
from rnnserve.server.snapshot import RecordEncoder
from rnnserve.server.state_store import StateStore
from rnnserve.server.state_tier.replies import KeptReply

log = logging.getLogger(__name__)

ModelKey = tuple[str, int]
# (identity, model name, the client's sequence id): sequences are scoped to their caller and model.
SequenceKey = tuple[str, str, str]

# Why a session is gone, remembered for this many recent ids (bounded memory).
TOMBSTONES = 65_536
# An identity is "<principal>" or "<principal>/<sub-identity>" (the transport's x-client-id under
# an authenticated principal); the per-principal session cap counts by the part before this.
PRINCIPAL_SEPARATOR = "/"


def principal_of(identity: str) -> str:
    """The principal an identity belongs to: "alice/worker-3" -> "alice"."""
    return identity.partition(PRINCIPAL_SEPARATOR)[0]


class Tombstone(NamedTuple):
    """Why a session (or a sequence) is gone, and who owned it: only the owner is told why."""

    reason: str
    owner: str


@dataclass(slots=True, eq=False)
class Session:
    """A client's binding to a model version and a slot of its StateStore.

    Everything a step changes (state rows, last output, step count) lives in the store, which
    commits it; the session only says where.
    """

    session_id: str
    model: str
    version: int
    identity: str
    store: StateStore
    slot: int
    created_at: float  # wall clock, for people
    last_used: float  # monotonic, for the TTL
    busy: bool = False
    closed: bool = False
    # The client's own name for the session's sequence (a KServe / Triton correlation id), unique
    # per identity and model; None for sessions opened by their server-made id.
    sequence: str | None = None
    # With a shared state tier: the step count of the state the tier holds, as this process last
    # wrote it (None: not written yet), and whether the memory copy is newer than that.
    written_step: int | None = None
    dirty: bool = False
    lease_until: float = 0.0  # monotonic time this process's lease on it is sure to last until
    encoder: RecordEncoder | None = None  # its state-tier record's encoder (built on first use)
    # With a shared state tier: the reply to the session's last message until it is written
    # with the state (state_tier/replies.py), so a retry whose reply was lost is answered again.
    last_reply: KeptReply | None = None

    @property
    def key(self) -> ModelKey:
        """(model, version) of the served model the session is bound to."""
        return (self.model, self.version)

    @property
    def step_count(self) -> int:
        """Steps taken since the session was created or reset."""
        return self.store.step_count(self.slot)


def over_principal_cap(cap: int, where: str = "") -> CapacityExceeded:
    """The refusal of a new session whose principal already holds `cap` live ones (`where`:
    " over every replica" when a shared state tier counted them)."""
    return CapacityExceeded(
        f"this principal holds its maximum of {cap} live sessions{where} "
        "(max_sessions_per_principal); close one or retry after some expire"
    )


class SessionManager:
    """Owns every live session; all methods run on the event loop thread.

    Sessions are kept in least-recently-used order, so the reaper and capacity reclaim look only
    at the oldest ones. A session is busy while one of its steps (or a generation) runs; a busy
    session never expires, and a session closed while busy frees its slot only when the step
    ends, so a late commit can never land in a slot reused by someone else.
    """

    def __init__(
        self,
        stores: Mapping[ModelKey, StateStore],
        *,
        ttl_s: float,
        max_sessions: int,
        max_sessions_per_principal: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = stores
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_sessions_per_principal = max_sessions_per_principal or max_sessions
        self._clock = clock
        self._wall = wall_clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._sequences: dict[SequenceKey, Session] = {}
        # Live sessions per principal; a principal with none has no entry (bounded memory).
        self._per_principal: Counter[str] = Counter()
        self._reaper: asyncio.Task[None] | None = None
        # Sessions by (model key, slot), for the state tier's write after a step of a slot.
        self._by_slot: dict[tuple[ModelKey, int], Session] = {}
        # Told of every removal (closed, expired, reclaimed) — not of `drop` — e.g. so that a
        # shared state tier deletes the session's record.
        self.on_remove: Callable[[Session, str], None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def live(self) -> Iterator[Session]:
        """Every live session (a snapshot of the list, safe to mutate the manager meanwhile)."""
        return iter(list(self._sessions.values()))

    def peek(self, session_id: str) -> Session | None:
        """The live session of this id, if in memory (no owner check, no TTL, no side effect)."""
        return self._sessions.get(session_id)

    def oldest(self) -> Iterator[Session]:
        """Live sessions, least recently used first (lazy: do not change the manager meanwhile)."""
        return iter(self._sessions.values())

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def at_slot(self, key: ModelKey, slot: int) -> Session | None:
        """The live session holding `slot` of model version `key`, if any."""
        return self._by_slot.get((key, slot))

    def count_of(self, principal: str) -> int:
        """How many live sessions `principal` holds (all its sub-identities together)."""
        return self._per_principal.get(principal, 0)

    def create(
        self,
        model: str,
        version: int,
        identity: str,
        *,
        session_id: str | None = None,
        created_at: float | None = None,
        sequence: str | None = None,
    ) -> Session:
        """A new session with the initial state (ids are 192-bit random, URL-safe).

        With `sequence`, the session is also found by the client's sequence id (`find_sequence`);
        an earlier live session of the same sequence is closed: a sequence restarts (and its slot
        counts for the new one). CapacityExceeded when the server holds `max_sessions`, or the
        identity's principal `max_sessions_per_principal`, and no expired session makes room.
        """
        if session_id is not None and session_id in self._sessions:
            raise ValueError(f"session id {short_id(session_id)} already exists")
        if sequence is not None:
            earlier = self._sequences.get((identity, model, sequence))
            if earlier is not None:
                self._remove(earlier, "closed")
        self._make_room(principal_of(identity))
        if session_id is None:
            session_id = secrets.token_urlsafe(24)
        store = self._stores[(model, version)]
        session = Session(
            session_id=session_id,
            model=model,
            version=version,
            identity=identity,
            store=store,
            slot=store.allocate(),
            created_at=created_at if created_at is not None else self._wall(),
            last_used=self._clock(),
            sequence=sequence,
        )
        self._sessions[session_id] = session
        self._by_slot[(session.key, session.slot)] = session
        self._per_principal[principal_of(identity)] += 1
        self._tombstones.pop(session_id, None)
        if sequence is not None:
            key = (identity, model, sequence)
            self._sequences[key] = session
            self._tombstones.pop(_sequence_tombstone(key), None)
        metrics.ACTIVE_SESSIONS.labels(model).inc()
        metrics.STATE_BYTES.labels(model).inc(store.slot_bytes)
        return session

    def _make_room(self, principal: str) -> None:
        """Refuse a new session of `principal` unless both caps leave room (after reclaiming)."""
        if len(self._sessions) >= self.max_sessions:
            self.reap(reason="reclaimed", limit=1)
        if len(self._sessions) >= self.max_sessions:
            raise CapacityExceeded(
                f"the server holds its maximum of {self.max_sessions} sessions; close one or retry "
                "after some expire"
            )
        cap = self.max_sessions_per_principal
        if self._per_principal.get(principal, 0) >= cap:
            self.reap()  # the principal's own idle-expired sessions may not be reaped yet
        if self._per_principal.get(principal, 0) >= cap:
            raise over_principal_cap(cap)

    def get(self, session_id: str, identity: str) -> Session:
        """The live session, if `identity` owns it; else SessionNotFound.

        Only the owner learns why a session is gone (closed, expired, evicted); an unknown id, a
        gone session of someone else and another identity's live session all answer the same.
        """
        session = self._sessions.get(session_id)
        if session is None or session.identity != identity:
            tombstone = self._tombstones.get(session_id) if session is None else None
            if tombstone is not None and tombstone.owner == identity:
                raise SessionNotFound(session_id, tombstone.reason)
            raise SessionNotFound(session_id)
        if not session.busy and self._clock() - session.last_used > self.ttl_s:
            self._remove(session, "expired")
            raise SessionNotFound(session_id, "expired")
        return session

    def find_sequence(self, identity: str, model: str, sequence: str) -> Session:
        """The live session of a client's sequence; SequenceNotStarted (saying why) if none."""
        key = (identity, model, sequence)
        session = self._sequences.get(key)
        # The key holds the identity: a sequence's tombstone is only ever read by its owner.
        tombstone = self._tombstones.get(_sequence_tombstone(key))
        reason = tombstone.reason if tombstone is not None else None
        if session is not None:
            try:
                return self.get(session.session_id, identity)
            except SessionNotFound as err:
                reason = err.reason
        raise SequenceNotStarted(sequence, model, reason or "unknown")

    def acquire(
        self, session_id: str, identity: str, expected_step_count: int | None = None
    ) -> Session:
        """Mark the session busy for one step (or one generation); pair with `release`."""
        session = self.get(session_id, identity)
        if session.busy:
            raise SessionBusy(
                f"session '{short_id(session_id)}' is already running a step; send the next step "
                "after the previous reply",
                field="session_id",
            )
        if expected_step_count is not None and expected_step_count != session.step_count:
            raise SessionBusy(
                f"out of order: the message expects step count {expected_step_count}, session "
                f"'{short_id(session_id)}' is at {session.step_count}",
                field="expected_step_count",
            )
        session.busy = True
        self.touch(session)
        return session

    def release(self, session: Session) -> None:
        """End the step begun by `acquire`."""
        session.busy = False
        if session.closed:
            session.store.release(session.slot)
        else:
            self.touch(session)

    def touch(self, session: Session) -> None:
        """Restart the idle TTL."""
        session.last_used = self._clock()
        if session.session_id in self._sessions:
            self._sessions.move_to_end(session.session_id)

    def close(self, session_id: str, identity: str) -> Session:
        """Remove the session; later lookups say it was closed."""
        session = self.get(session_id, identity)
        self._remove(session, "closed")
        return session

    def remove(self, session: Session, reason: str) -> None:
        """Remove a session for `reason` (closed, expired, evicted)."""
        if self._sessions.get(session.session_id) is session:
            self._remove(session, reason)

    def drop(self, session: Session) -> None:
        """Take a session out of memory only: it lives on in the shared state tier (evicted to
        it, or moved to another process). No tombstone: its next call loads it again."""
        if self._sessions.get(session.session_id) is not session:
            return
        self._forget(session)
        if session.sequence is not None:
            key = (session.identity, session.model, session.sequence)
            if self._sequences.get(key) is session:
                del self._sequences[key]
        if not session.busy:
            session.store.release(session.slot)

    def _forget(self, session: Session) -> None:
        """Take a session out of every index and count (the slot is the caller's to release)."""
        del self._sessions[session.session_id]
        self._by_slot.pop((session.key, session.slot), None)
        session.closed = True
        principal = principal_of(session.identity)
        self._per_principal[principal] -= 1
        if self._per_principal[principal] <= 0:
            del self._per_principal[principal]
        metrics.ACTIVE_SESSIONS.labels(session.model).dec()
        metrics.STATE_BYTES.labels(session.model).dec(session.store.slot_bytes)

    def _remove(self, session: Session, reason: str, counted_as: str | None = None) -> None:
        """Drop a session; `reason` is what its owner is told, `counted_as` the metric label."""
        self._forget(session)
        tombstone = Tombstone(reason, session.identity)
        if session.sequence is not None:
            key = (session.identity, session.model, session.sequence)
            if self._sequences.get(key) is session:
                del self._sequences[key]
                self._remember(_sequence_tombstone(key), tombstone)
        if not session.busy:
            session.store.release(session.slot)
        self._remember(session.session_id, tombstone)
        if self.on_remove is not None:
            self.on_remove(session, reason)
        if reason != "closed":
            metrics.EVICTIONS.labels(counted_as or reason).inc()
        log.info("session %s %s", short_id(session.session_id), reason)

    def _remember(self, key: str, tombstone: Tombstone) -> None:
        """Keep why a session (or a sequence) is gone, for the most recent TOMBSTONES of them."""
        self._tombstones[key] = tombstone
        if len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)

    def reap(self, *, reason: str = "expired", limit: int | None = None) -> int:
        """Remove idle-expired sessions (oldest first); returns how many."""
        now, removed = self._clock(), 0
        for session in list(self._sessions.values()):
            if now - session.last_used <= self.ttl_s:
                break  # least-recently-used order: the rest are younger
            if session.busy:
                continue
            # A reclaimed session was expired anyway; its owner is told "expired".
            self._remove(session, "expired", counted_as=reason)
            removed += 1
            if limit is not None and removed >= limit:
                break
        return removed

    def view(self, session: Session) -> SessionView:
        """The public description of a session."""
        idle = self._clock() - session.last_used
        return SessionView(
            session_id=session.session_id,
            model=session.model,
            version=session.version,
            step_count=session.step_count,
            created_at=session.created_at,
            expires_at=self._wall() + max(0.0, self.ttl_s - idle),
            state_bytes=session.store.slot_bytes,
            durable_step_count=session.written_step,
        )

    def start_reaper(self) -> None:
        """Expire idle sessions in the background (a few times per TTL, at most every 30 s)."""
        interval = min(max(self.ttl_s / 4, 0.05), 30.0)

        async def run() -> None:
            while True:
                await asyncio.sleep(interval)
                self.reap()

        self._reaper = asyncio.get_running_loop().create_task(run(), name="session-reaper")

    async def stop_reaper(self) -> None:
        """Stop the background reaper."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None


def _sequence_tombstone(key: SequenceKey) -> str:
    """The tombstone key of a sequence (NUL cannot occur in a session id)."""
    return "\0".join(key)
