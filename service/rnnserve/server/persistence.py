"""SessionPersistence: sessions to snapshots and back (export, import, save, restore)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve.server import metrics, snapshot, snapshot_files
from rnnserve.server.errors import (
    CapacityExceeded,
    InvalidSnapshot,
    ModelNotStreamable,
    RnnServeError,
    SnapshotSecretRequired,
)
from rnnserve.server.registry import ModelRegistry, ServedModel
from rnnserve.server.sessions import Session, SessionManager
from rnnserve.server.state_store import SlotState

log = logging.getLogger(__name__)


class SessionPersistence:
    """Turns sessions into snapshots and snapshots into sessions, one path each way.

    An exported snapshot carries no owner: whoever imports it owns the new session. The file
    saved at shutdown keeps each session's id, owner and creation time, so that a restart
    restores them as they were. `require_secret` (an exposed server) refuses imports while no
    signing secret is configured: unsigned snapshots can be forged.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        sessions: SessionManager,
        secret: bytes | None,
        *,
        require_secret: bool = False,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._secret = secret
        self._require_secret = require_secret

    @property
    def secret(self) -> bytes | None:
        """The snapshot signing secret (None: snapshots are only checksummed)."""
        return self._secret

    def export(self, session: Session, *, with_identity: bool = False) -> bytes:
        """The session's snapshot, bound to its model version and weights."""
        return snapshot.encode(self._snapshot(session, with_identity), self._secret)

    def export_record(self, session: Session) -> bytes:
        """`export(session, with_identity=True)`, byte for byte, made fast for the state tier:
        the header is built once per session and the states are read without copies."""
        states, last_output = session.store.views(session.slot)
        encoder = session.encoder
        if encoder is None or encoder.has_last_output != (last_output is not None):
            encoder = snapshot.RecordEncoder(
                self._snapshot(session, with_identity=True), self._secret
            )
            session.encoder = encoder
        return encoder.encode(session.step_count, states, last_output)

    def _snapshot(self, session: Session, with_identity: bool) -> snapshot.Snapshot:
        served = self._registry.served(session.key)
        state = served.store.read(session.slot)
        record = None
        if with_identity:
            record = snapshot.SessionIdentity(
                session.session_id, session.identity, session.created_at, session.sequence
            )
        return snapshot.Snapshot(
            model=session.model,
            version=session.version,
            weights_sha256=served.model.weights_sha256,
            step_count=state.step_count,
            state_names=[s.input_name for s in served.manifest.states],
            states=state.states,
            session=record,
            last_output=state.last_output,
        )

    def load(self, data: bytes, identity: str) -> Session:
        """A new session owned by `identity`, continuing from an exported snapshot."""
        if self._secret is None and self._require_secret:
            raise SnapshotSecretRequired(
                "snapshot import needs a signing secret on an exposed server; its operator sets "
                "one with snapshot_secret_file",
                field="snapshot",
            )
        return self._admit(snapshot.decode(data, self._secret), identity)

    def admit_record(self, decoded: snapshot.Snapshot) -> Session:
        """A live session continuing from a state-tier record: same id, owner and birth."""
        if decoded.session is None:
            raise InvalidSnapshot("the record has no session identity", field="snapshot")
        return self._admit(decoded, decoded.session.identity, saved=True)

    def _admit(self, decoded: snapshot.Snapshot, identity: str, *, saved: bool = False) -> Session:
        """The one way a snapshot becomes a session (a saved one keeps its id and birth)."""
        served = self._served_for(decoded)
        served.require_streamable()
        record = decoded.session
        if saved and record is None:
            raise InvalidSnapshot("saved session has no session record", field="snapshot")
        session = self._sessions.create(
            decoded.model,
            decoded.version,
            identity,
            session_id=record.session_id if saved and record else None,
            created_at=record.created_at if saved and record else None,
            sequence=record.sequence if saved and record else None,
        )
        served.store.write(
            session.slot, SlotState(decoded.states, decoded.last_output, decoded.step_count)
        )
        return session

    def _served_for(self, decoded: snapshot.Snapshot) -> ServedModel:
        """The served version the snapshot was taken on, checked against its weights and shapes."""
        served = self._registry.find(decoded.model, decoded.version)
        if served is None:
            raise InvalidSnapshot(
                f"snapshot is for model {decoded.model!r} version {decoded.version}, which this "
                "server does not serve",
                field="snapshot",
                reason="model",
            )
        snapshot.check_matches(
            decoded,
            decoded.model,
            decoded.version,
            served.model.weights_sha256,
            served.manifest.states,
        )
        if decoded.last_output is not None:
            index = served.logits_index
            want = None if index is None else served.manifest.outputs[index].shape
            if want is None or list(decoded.last_output.shape) != want:
                raise InvalidSnapshot(
                    f"snapshot's last output has shape {list(decoded.last_output.shape)}; the "
                    f"model expects {want}",
                    field="snapshot",
                    reason="model",
                )
        return served

    async def save(self, directory: Path) -> None:
        """Write every live session, with its id and owner, to the directory's sessions file."""
        blobs = [self.export(s, with_identity=True) for s in self._sessions.live()]
        count, path = await asyncio.to_thread(snapshot_files.save, directory, blobs)
        log.info("saved %d sessions to %s", count, path)

    async def restore(self, directory: Path) -> RestoreReport:
        """Bring back the sessions saved by `save`, and those earlier starts kept aside.

        A session that cannot be restored now (bad signature, a model not served, no room, ...)
        is never lost: it goes into a new kept-aside file, which every later start retries, so a
        restart with the right secret and models brings it back. Files are removed only once
        every session in them is live or kept aside again (a second start must not restore stale
        copies of sessions that live on in memory now).
        """
        report = RestoreReport()
        kept: list[bytes] = []
        consumed: list[Path] = []
        seen: set[str] = set()
        for path in await asyncio.to_thread(snapshot_files.sources, directory):
            try:
                blobs = await asyncio.to_thread(snapshot.read_file, path)
            except (OSError, InvalidSnapshot) as err:
                moved = await asyncio.to_thread(snapshot_files.set_aside_unreadable, path)
                report.unreadable.append(moved)
                metrics.SNAPSHOT_UNRESTORED.labels("unreadable").inc()
                log.warning("cannot read saved sessions %s (%s); moved it to %s", path, err, moved)
                continue
            consumed.append(path)
            for blob in blobs:
                reason = self._restore_saved(blob, seen)
                if reason is None:
                    report.restored += 1
                elif reason != "duplicate":
                    kept.append(blob)
                    report.kept[reason] += 1
        if kept:
            report.kept_in = await asyncio.to_thread(snapshot_files.keep_aside, directory, kept)
            for reason, count in report.kept.items():
                metrics.SNAPSHOT_UNRESTORED.labels(reason).inc(count)
            log.warning(
                "%d saved sessions were not restored (%s); kept in %s: every start retries them, "
                "so a start with the snapshot secret and models they were saved with restores them",
                len(kept),
                ", ".join(f"{count} {reason}" for reason, count in sorted(report.kept.items())),
                report.kept_in,
            )
        await asyncio.to_thread(snapshot_files.remove, consumed)
        if consumed:
            log.info(
                "restored %d of %d saved sessions from %s",
                report.restored,
                report.restored + len(kept),
                directory,
            )
        return report

    def _restore_saved(self, blob: bytes, seen: set[str]) -> str | None:
        """Restore one saved session; None when done, else why not (a metric label)."""
        try:
            decoded = snapshot.decode(blob, self._secret)
            record = decoded.session
            if record is None:
                raise InvalidSnapshot("saved session has no session record", field="snapshot")
            if record.session_id in seen:
                # The same session twice: a start that crashed between writing its kept-aside
                # file and removing the files it read. The first copy (the newest) won.
                return "duplicate"
            self._admit(decoded, record.identity, saved=True)
            seen.add(record.session_id)
            return None
        except InvalidSnapshot as err:
            log.debug("a saved session was not restored: %s", err)
            return err.reason
        except ModelNotStreamable:
            return "model"
        except CapacityExceeded:
            return "capacity"
        except RnnServeError as err:
            log.warning("a saved session was not restored: %s", err)
            return "other"


@dataclass
class RestoreReport:
    """What a start did with the saved sessions."""

    restored: int = 0
    kept: Counter[str] = field(default_factory=Counter)  # reason -> sessions kept aside
    kept_in: Path | None = None
    unreadable: list[Path] = field(default_factory=list)  # files moved out of the way
