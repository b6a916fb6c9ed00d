"""RedisStateTier: session state in Redis, owned by one process at a time through a lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry
from rnnserve.server import metrics, snapshot
from rnnserve.server.domain import FloatArray, OutputSteps
from rnnserve.server.errors import (
    InvalidSnapshot,
    SessionMoved,
    SessionStateInvalid,
    StateTierUnavailable,
)
from rnnserve.server.inputs import ModelInput
from rnnserve.server.logs import short_id
from rnnserve.server.persistence import SessionPersistence
from rnnserve.server.registry import CommittedStep
from rnnserve.server.sessions import (
    ModelKey,
    Session,
    SessionManager,
    over_principal_cap,
    principal_of,
)
from rnnserve.server.settings import Settings
from rnnserve.server.state_tier import replies, scripts

log = logging.getLogger(__name__)

Durability = Literal["sync", "batch", "none"]

# Keys per RENEW / RELEASE script call: long enough to amortise the round trip, short enough
# that one call never holds Redis for more than about a millisecond.
_CHUNK = 1000
_SHA1 = {
    script: scripts.sha1(script)
    for script in (scripts.CLAIM, scripts.WRITE, scripts.RENEW, scripts.DELETE, scripts.RELEASE)
}
_LEASE_MARGIN = 0.9
# A Redis that does not answer within this long counts as unreachable (the step is refused).
_SOCKET_TIMEOUT_S = 2.0
_VALUES = 5  # WRITE script values per session (see scripts.WRITE)


@dataclass(frozen=True)
class _Entry:
    """One session of a group write: what was encoded for it, and who waits."""

    session: Session
    future: asyncio.Future[None] | None  # what a waiting caller awaits (None: nobody waits)
    step: int
    reply: replies.KeptReply | None


class RedisStateTier:
    """Keeps each session's record in Redis and this process's right to serve it.

    - A step's new state is written after its batch commits: all the sessions that stepped in one
      loop iteration (one scheduler batch) go in one write — one Lua script call for the whole
      group — and one write is in flight at a time (group commit). `sync` makes the step's reply
      wait for its write; `batch` does not (the loss window is the write in flight and those
      queued behind it); `none` writes only when a session is evicted or the server stops.
    - Every write is a compare-and-set in Lua: it lands only if the record's owner is this process
      and its step count is what this process last wrote. Otherwise another process took the
      session over: this copy is dropped and the caller gets SessionMoved (retryable).
    - A session not in memory is loaded on its next call, once its owner's lease has lapsed (or
      was ours); the load takes the lease in the same atomic script.
    - Every write renews its session's lease; sessions used within the last lease are renewed
      every third of `owner_lease_s`; an idle session's lease lapses and is confirmed (or this
      copy dropped as stale) before its next call uses it.
    - With `session_cache_size`, idle sessions whose state Redis already holds are dropped from
      memory least recently used first; their next call loads them again.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: SessionManager,
        persistence: SessionPersistence,
        *,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.instance_id = settings.instance_id or secrets.token_hex(8)
        self.durability: Durability = settings.durability
        self._url = settings.redis_url
        self._lease_ms = max(1, round(settings.owner_lease_s * 1000))
        # What this process counts on: a lease runs from when its script was sent, less a margin
        # for the time Redis took to run it.
        self._lease_s = settings.owner_lease_s * _LEASE_MARGIN
        self._ttl_ms = max(1, round(settings.session_ttl_s * 1000))
        self._renew_every_s = settings.owner_lease_s / 3
        self._cache_size = settings.session_cache_size
        self._sessions = sessions
        self._persistence = persistence
        self._client = client
        # Group commit: sessions waiting for the next write, each with the future its step awaits.
        self._pending: dict[str, tuple[Session, asyncio.Future[None] | None]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._unwritten: dict[str, Session] = {}  # batch writes that failed: retried
        self._in_flight: list[Session] = []
        self._deleting: dict[str, asyncio.Task[None]] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._unavailable = False  # logged once per outage, not once per step
        self._closing = False
        self._batch_interval_s = settings.batch_interval_s
        self._last_write = 0.0  # when the last group write began (monotonic)
        self._send_now = asyncio.Event()  # a queued write that someone waits for

    # Lifecycle.

    async def start(self) -> None:
        """Connect (lazily: a Redis still starting is no reason to fail) and start renewing."""
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                socket_timeout=_SOCKET_TIMEOUT_S,
                socket_connect_timeout=_SOCKET_TIMEOUT_S,
                # One retry, on a connection that broke before the command went out (a Redis
                # restart leaves stale pooled connections); never on a timeout, after which the
                # write may have landed and a second try would fail its own compare-and-set.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                health_check_interval=1,
            )
        self._sessions.on_remove = self._on_remove
        self._maintainer = asyncio.get_running_loop().create_task(
            self._maintain(), name="state-tier"
        )
        log.info(
            "state tier: redis, durability %s, instance %s, lease %.1f s, cache %s",
            self.durability,
            self.instance_id,
            self._lease_ms / 1000,
            self._cache_size or "unbounded",
        )

    async def stop(self) -> None:
        """Write every session Redis does not hold yet, let our leases lapse, disconnect.

        A survivor may then load any of them at once instead of waiting for a lease to run out.
        """
        self._closing = True
        self._send_now.set()
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        live = list(self._sessions.live())
        waits = [self.persist(s) for s in live if s.dirty or s.written_step is None]
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("a session could not be written at stop: %s", outcome)
        try:
            await self._each_chunk(
                scripts.RELEASE, [s for s in live if s.written_step is not None], renew=False
            )
        except RedisError as err:
            log.warning("could not release leases at stop (%s); they lapse by themselves", err)
        if self._client is not None:
            await self._client.aclose()

    # Steps.

    def after_step(
        self, key: ModelKey, slot: int, committed: CommittedStep | None = None
    ) -> Awaitable[None] | None:
        """A step of `slot` committed: keep its reply (if it is one to keep) and queue its
        session's write; with sync, what to await."""
        session = self._sessions.at_slot(key, slot)
        if session is None:
            return None
        session.last_reply = None
        if self.durability == "none":
            session.dirty = True
            return None
        if committed is not None:  # kept until written (encoded then, after any coalescing)
            session.last_reply = replies.KeptReply.of(
                session.step_count, committed.inputs, committed.steps, committed.rows
            )
        if self.durability == "batch":
            self._queue(session)
            return None
        return self.persist(session)

    async def kept_reply(
        self, session: Session, expected_step_count: int, inputs: ModelInput, steps: OutputSteps
    ) -> list[FloatArray] | None:
        """The output rows of the session's last message if `inputs`, sent at
        `expected_step_count`, are that message again (its reply was lost) and the rows kept
        cover `steps`; None otherwise (the step is then refused as out of order).

        The reply is in memory until its write lands, then only in Redis (read back here: a
        lost reply is rare, and idle sessions hold no outputs).
        """
        kept = session.last_reply
        if kept is None:
            if session.written_step != session.step_count:
                return None
            kept = await self._read_reply(session)
            if kept is None:
                return None
        if not kept.answers(expected_step_count, session.step_count, inputs):
            return None
        if steps is OutputSteps.ALL and kept.steps is OutputSteps.LAST and len(inputs) > 1:
            return None
        metrics.TIER_REPLIES_AGAIN.inc()
        log.info(
            "session %s: the message at step %d answered again from its kept reply",
            short_id(session.session_id),
            expected_step_count,
        )
        return kept.rows

    async def _read_reply(self, session: Session) -> replies.KeptReply | None:
        """The reply kept in the session's record (None if none, or unusable)."""
        try:
            data = await self._redis().hget(scripts.record_key(session.session_id), "reply")
        except RedisError as err:
            self._report_unavailable(err)
            raise self._unavailable_error() from None
        if not isinstance(data, bytes) or not data:  # bytes: the client does not decode
            return None
        try:
            return replies.decode(data, session.session_id, self._persistence.secret)
        except InvalidSnapshot as err:
            log.warning("session %s: kept reply unusable: %s", short_id(session.session_id), err)
            return None

    def persist(self, session: Session) -> asyncio.Future[None]:
        """Queue the session's current state for the next group write, which goes at once;
        resolved once written.

        Fails with StateTierUnavailable (Redis did not answer; the memory copy stays dirty and is
        written later) or SessionMoved (another process owns it; this copy is dropped).
        """
        self._send_now.set()
        queued = self._queue(session)
        if queued is None:
            queued = asyncio.get_running_loop().create_future()
            self._pending[session.session_id] = (session, queued)
        return queued

    def _queue(self, session: Session) -> asyncio.Future[None] | None:
        """Queue the session for the next group write without waiting for it: with batch
        durability that write may wait up to `batch_interval_s` since the last one began, so
        that the session's steps meanwhile go in one write (a failed one is retried). Returns
        the future a caller already waits on, if any."""
        session.dirty = True
        queued = self._pending.get(session.session_id)
        if queued is None:
            self._pending[session.session_id] = (session, None)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())
        return None if queued is None else queued[1]

    async def created(self, session: Session) -> None:
        """A new session: its record is created now (except with none: at eviction or stop)."""
        if self.durability == "none":
            session.dirty = True
            return
        try:
            await self.persist(session)
        except BaseException:
            self._sessions.drop(session)  # a session no replica could continue is no session
            raise

    async def adopt_restored(self) -> None:
        """Sessions restored from snapshot_dir at start: create their records (none: at stop).

        A session Redis already has (another process continued it meanwhile) keeps Redis's
        newer state: the create is refused, this copy dropped, and its next call loads it.
        """
        if self.durability == "none":
            return
        writes = [self.persist(s) for s in self._sessions.live() if s.written_step is None]
        failed = 0
        for outcome in await asyncio.gather(*writes, return_exceptions=True):
            failed += isinstance(outcome, BaseException)
        if writes:
            log.info(
                "state tier: %d restored sessions written, %d left to Redis's own copy or "
                "unwritten",
                len(writes) - failed,
                failed,
            )

    async def _write_pending(self) -> None:
        """Write the queued sessions, one group write at a time, until none is queued."""
        try:
            while self._pending:
                await self._gathered()
                group, self._pending = self._pending, {}
                self._send_now.clear()
                self._last_write = time.monotonic()
                try:
                    await self._write_group(list(group.values()))
                except Exception as err:  # a bug: fail these steps, never leave them waiting
                    log.exception("state tier write failed")
                    for _, future in group.values():
                        _fail(future, err)
            self._trim()
        finally:
            self._writer = None

    async def _gathered(self) -> None:
        """Batch durability: let steps gather until `batch_interval_s` after the last write
        began, unless a write that someone waits for is queued (or the server stops)."""
        delay = self._last_write + self._batch_interval_s - time.monotonic()
        if self.durability != "batch" or delay <= 0 or self._closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._send_now.wait(), delay)

    async def _write_group(self, group: list[tuple[Session, asyncio.Future[None] | None]]) -> None:
        entries: list[_Entry] = []
        values: list[Any] = []
        secret = self._persistence.secret
        for session, future in group:
            if session.closed:  # closed, expired or dropped meanwhile: nothing to keep
                _resolve(future)
                continue
            # Encoded now, on the loop thread: state, step count and last reply are one picture.
            blob = self._persistence.export_record(session)
            step = session.step_count
            expected = "new" if session.written_step is None else str(session.written_step)
            kept = session.last_reply
            reply = b"" if kept is None else kept.encode(session.session_id, secret)
            values += [expected, step, blob, session.identity, reply]
            entries.append(_Entry(session, future, step, kept))
        for at in range(0, len(entries), _CHUNK):
            await self._write_chunk(
                entries[at : at + _CHUNK], values[_VALUES * at : _VALUES * (at + _CHUNK)]
            )

    async def _write_chunk(self, entries: list[_Entry], values: list[Any]) -> None:
        """One WRITE script call for these sessions; each future told its own outcome."""
        keys = [key for entry in entries for key in _keys(entry.session)]
        metrics.TIER_WRITES_IN_FLIGHT.set(len(entries))
        self._in_flight = [entry.session for entry in entries]
        sent = time.monotonic()
        cap = self._sessions.max_sessions_per_principal
        try:
            results = await self._script(
                scripts.WRITE, keys, self.instance_id, self._lease_ms, self._ttl_ms, cap, *values
            )
        except ResponseError as err:  # a key that holds something else: those sessions only
            await self._write_each(entries, values, err)
            return
        except RedisError as err:
            self._report_unavailable(err)
            for entry in entries:
                _fail(entry.future, self._unavailable_error())
                if self.durability == "batch":  # nobody waits for it: written when Redis is back
                    self._unwritten[entry.session.session_id] = entry.session
            return
        finally:
            metrics.TIER_WRITES_IN_FLIGHT.set(0)
            self._in_flight = []
        self._report_available()
        for entry, result in zip(entries, results, strict=True):
            session = entry.session
            if int(result) == 1:
                session.written_step = entry.step
                session.dirty = session.step_count != entry.step
                session.lease_until = sent + self._lease_s
                if session.last_reply is entry.reply:  # Redis keeps it now (see kept_reply)
                    session.last_reply = None
                _resolve(entry.future)
            elif int(result) == 2:  # a new session over its principal's cap (all replicas)
                self._sessions.drop(session)
                _fail(entry.future, over_principal_cap(cap, " over every replica"))
            else:
                self._lose(session)
                _fail(entry.future, _moved(session.session_id))

    async def _write_each(
        self,
        entries: list[_Entry],
        values: list[Any],
        err: ResponseError,
    ) -> None:
        """Redis refused a group write (a script error: some key is not a record of ours); write
        the sessions one by one, so that only the damaged ones fail."""
        if len(entries) == 1:
            session = entries[0].session
            metrics.TIER_ERRORS.labels("invalid").inc()
            self._sessions.drop(session)
            why = f"Redis refused the write ({err})"
            _fail(entries[0].future, self._invalid(session.session_id, why))
            return
        for index, entry in enumerate(entries):
            await self._write_chunk([entry], values[_VALUES * index : _VALUES * (index + 1)])

    def _lose(self, session: Session) -> None:
        """Another process owns the session now: forget this copy (its next call reloads)."""
        metrics.TIER_ERRORS.labels("moved").inc()
        log.warning(
            "session %s is owned by another process now; dropped this copy",
            short_id(session.session_id),
        )
        self._sessions.drop(session)

    # Loading.

    async def hold(self, session_id: str, identity: str) -> None:
        """Make sure this process may serve the session before a call uses it.

        A session not in memory is loaded from Redis, taking its lease. A session in memory whose
        lease has lapsed (idle longer than `owner_lease_s`: only active sessions are renewed) is
        confirmed first: if Redis still names this process and the step it last wrote, the lease
        is taken again; if another process has moved it on, this copy is dropped and the newer
        state loaded (or SessionMoved while that process holds it). Returns without a session
        when Redis has no record of it for `identity` (the caller answers not found).
        SessionStateInvalid for a record this server cannot use; StateTierUnavailable when Redis
        does not answer.
        """
        session = self._sessions.peek(session_id)
        if session is not None and not self._lapsed(session, identity):
            return
        holding = self._loading.get(session_id)
        if holding is None:
            holding = asyncio.ensure_future(self._hold(session_id, identity))
            self._loading[session_id] = holding
            holding.add_done_callback(lambda _: self._loading.pop(session_id, None))
        await asyncio.shield(holding)

    def _lapsed(self, session: Session, identity: str) -> bool:
        """True if the session's lease may have lapsed and it must be confirmed before use."""
        return (
            session.identity == identity  # someone else's session: answered not found anyway
            and not session.busy  # a running step's write checks ownership itself
            and session.written_step is not None  # not in Redis yet (durability none)
            and session.lease_until <= time.monotonic()
        )

    async def _hold(self, session_id: str, identity: str) -> None:
        session = self._sessions.peek(session_id)
        if session is not None:
            reply, sent = await self._claim(session_id, identity)
            if (
                reply[0] == 1
                and int(reply[1]) == session.written_step
                and self._sessions.peek(session_id) is session
            ):
                session.lease_until = sent + self._lease_s
                return
            self._lose(session)  # moved on elsewhere (or gone): this copy is stale
            if reply[0] != 1:
                self._refuse(session_id, reply)
                return
        await self._load(session_id, identity)

    async def _claim(self, session_id: str, identity: str) -> tuple[list[Any], float]:
        """The CLAIM script's reply for the session (the lease is ours if it says 1), and when
        it was sent (monotonic)."""
        sent = time.monotonic()
        try:
            reply: list[Any] = await self._script(
                scripts.CLAIM,
                [scripts.record_key(session_id)],
                self.instance_id,
                self._lease_ms,
                identity,
            )
        except ResponseError as err:  # e.g. the key holds something that is not our record
            raise self._invalid(session_id, f"Redis refused to read it ({err})") from None
        except RedisError as err:
            self._report_unavailable(err)
            raise self._unavailable_error() from None
        self._report_available()
        return reply, sent

    @staticmethod
    def _refuse(session_id: str, reply: list[Any]) -> None:
        """Raise SessionMoved for a CLAIM that found another live owner (no record: nothing)."""
        if reply[0] == 2:
            metrics.TIER_ERRORS.labels("moved").inc()
            raise SessionMoved(
                f"session '{short_id(session_id)}' is served by another replica (its lease runs "
                f"{int(reply[2])} ms more); retry",
                field="session_id",
            )

    async def _load(self, session_id: str, identity: str) -> None:
        reply, claimed_at = await self._claim(session_id, identity)
        if reply[0] != 1:
            self._refuse(session_id, reply)
            return
        if session_id in self._sessions:  # loaded by a call that raced this one
            return
        try:
            step = int(reply[1])
            decoded = snapshot.decode(bytes(reply[2]), self._persistence.secret)
            if decoded.session is None or decoded.session.session_id != session_id:
                raise InvalidSnapshot("the record belongs to another session", field="snapshot")
            if decoded.step_count != step:
                raise InvalidSnapshot("the record's step count disagrees with its state")
            self._trim(room=1)
            session = self._persistence.admit_record(decoded)
        except (InvalidSnapshot, ValueError, TypeError) as err:
            raise self._invalid(session_id, getattr(err, "message", str(err))) from None
        session.written_step = step
        session.lease_until = claimed_at + self._lease_s
        metrics.TIER_LOADS.inc()
        log.info("session %s loaded from the state tier", short_id(session_id))

    # Closing, expiry, eviction, renewal.

    def _on_remove(self, session: Session, reason: str) -> None:
        """A session was closed or expired: delete its record (if this process owns it)."""
        if session.written_step is None and session.session_id not in self._pending:
            return
        task = asyncio.get_running_loop().create_task(self._delete(session))
        self._deleting[session.session_id] = task
        task.add_done_callback(lambda _: self._deleting.pop(session.session_id, None))

    async def _delete(self, session: Session) -> None:
        try:
            await self._script(scripts.DELETE, list(_keys(session)), self.instance_id)
        except RedisError as err:  # the key's idle TTL removes it in the end
            why = short_id(session.session_id)
            log.warning("could not delete the record of session %s: %s", why, err)

    async def settle(self, session_id: str) -> None:
        """Wait for the deletion of a just-closed session's record (a close is then final)."""
        task = self._deleting.get(session_id)
        if task is not None:
            await asyncio.shield(task)

    def make_room(self) -> None:
        """Before a new session: evict so that the cache has room for it (if it has a bound)."""
        self._trim(room=1)

    def _trim(self, room: int = 0) -> None:
        """Drop least recently used idle sessions beyond the cache size; queue dirty ones."""
        if not self._cache_size:
            return
        excess = len(self._sessions) + room - self._cache_size
        if excess <= 0:
            return
        clean: list[Session] = []
        for session in self._sessions.oldest():
            if len(clean) >= excess:
                break
            if session.busy:
                continue
            if session.dirty or session.written_step is None:
                self._queue(session)  # written first; evicted by the trim after its write
                continue
            clean.append(session)
        for session in clean:
            self._sessions.drop(session)
        metrics.TIER_EVICTIONS.inc(len(clean))

    async def _maintain(self) -> None:
        """Renew the leases of active sessions, retry failed writes, evict, report the lag."""
        # A flag, not only the cancellation: redis-py can turn a cancellation that lands inside a
        # command into a connection error, which the loop would survive.
        while not self._closing:
            await asyncio.sleep(self._renew_every_s)
            if self._closing:
                return
            try:
                await self._renew()
                unwritten, self._unwritten = self._unwritten, {}
                for session in unwritten.values():
                    if session.dirty and not session.closed:
                        self._queue(session)
                self._trim()
                metrics.TIER_DURABLE_LAG.set(self.durable_lag())
            except RedisError as err:
                self._report_unavailable(err)
            except Exception:  # a bug here must not end lease renewal for good
                log.exception("state tier maintenance failed")

    async def _renew(self) -> None:
        """Renew the leases about to lapse of sessions used within the last lease.

        Idle sessions let theirs lapse (a working set of 100,000 would otherwise cost 100 script
        calls every few seconds); their next call confirms the lease first (`hold`). With sync or
        batch durability every step's write renews its lease too, so this is mostly for none.
        """
        now = time.monotonic()
        due = now + 2 * self._renew_every_s
        active = now - self._lease_s
        held: list[Session] = []
        for session in reversed(list(self._sessions.oldest())):
            if session.last_used < active:
                break  # least recently used order: the rest are idle too
            if session.written_step is not None and session.lease_until <= due:
                held.append(session)
        sent = time.monotonic()
        for session, renewed in await self._each_chunk(scripts.RENEW, held, renew=True):
            if renewed:
                session.lease_until = sent + self._lease_s
            elif not session.busy and not session.closed:
                self._lose(session)  # its lease went to another process

    async def _each_chunk(
        self, script: str, sessions: list[Session], *, renew: bool
    ) -> list[tuple[Session, int]]:
        """Run a many-key script over `sessions`, a chunk per call; each session's answer."""
        answers: list[tuple[Session, int]] = []
        for at in range(0, len(sessions), _CHUNK):
            chunk = sessions[at : at + _CHUNK]
            if renew:
                keys = [key for session in chunk for key in _keys(session)]
            else:
                keys = [scripts.record_key(session.session_id) for session in chunk]
            args = (self._lease_ms, self._ttl_ms) if renew else ()
            result = await self._script(script, keys, self.instance_id, *args)
            if renew:
                answers += zip(chunk, (int(a) for a in result), strict=True)
        return answers

    def durable_lag(self) -> int:
        """Steps in memory that Redis does not hold yet, over every session held."""
        if self.durability == "sync":
            return 0  # a step is only answered once Redis holds it
        if self.durability == "batch":  # only queued, in-flight or failed writes lag
            lagging = {s.session_id: s for s, _ in self._pending.values()}
            lagging.update(self._unwritten)
            lagging.update((s.session_id, s) for s in self._in_flight)
            sessions: Iterable[Session] = lagging.values()
        else:
            sessions = self._sessions.live()
        return sum(
            s.step_count - (s.written_step or 0)
            for s in sessions
            if not s.closed and (s.dirty or s.written_step is None)
        )

    async def _script(self, script: str, keys: list[str], *args: Any) -> Any:
        """Run a script by its id (sent whole only when Redis does not have it: after a restart)."""
        client = self._redis()
        try:
            return await client.evalsha(_SHA1[script], len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(script, len(keys), *keys, *args)

    # Errors.

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StateTierUnavailable("the state tier is not started")
        return self._client

    def _unavailable_error(self) -> StateTierUnavailable:
        return StateTierUnavailable(
            "the session state store (Redis) is unreachable; nothing was changed, retry shortly"
        )

    def _report_unavailable(self, err: BaseException) -> None:
        metrics.TIER_ERRORS.labels("unavailable").inc()
        if not self._unavailable:
            self._unavailable = True
            log.error("state tier unreachable: %s; refusing steps until it answers", err)

    def _report_available(self) -> None:
        if self._unavailable:
            self._unavailable = False
            log.warning("state tier reachable again")

    @staticmethod
    def _invalid(session_id: str, why: str) -> SessionStateInvalid:
        metrics.TIER_ERRORS.labels("invalid").inc()
        return SessionStateInvalid(
            f"session '{short_id(session_id)}' has a stored state this server cannot use "
            f"({why[:200]}); open a new session",
            field="session_id",
        )


def _keys(session: Session) -> tuple[str, str]:
    """The session's record key and its principal's key (scripts.WRITE, RENEW, DELETE)."""
    return scripts.keys_of(session.session_id, principal_of(session.identity))


def _moved(session_id: str) -> SessionMoved:
    return SessionMoved(
        f"session '{short_id(session_id)}' moved to another replica; nothing was changed here, "
        "retry",
        field="session_id",
    )


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)
        # a caller that stopped waiting (cancelled) must not log "exception never retrieved"
        future.add_done_callback(lambda f: f.exception())
