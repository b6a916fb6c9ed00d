"""SessionPersistence: sessions to snapshots and back (export, import, save, restore)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rnnserve.server import metrics, snapshot
from rnnserve.server.errors import InvalidSnapshot, RnnServeError
from rnnserve.server.registry import ModelRegistry, ServedModel
from rnnserve.server.sessions import Session, SessionManager
from rnnserve.server.state_store import SlotState

log = logging.getLogger(__name__)


class SessionPersistence:
    """Turns sessions into snapshots and snapshots into sessions, one path each way.

    An exported snapshot carries no owner: whoever imports it owns the new session. The file
    saved at shutdown keeps each session's id, owner and creation time, so that a restart
    restores them as they were.
    """

    def __init__(
        self, registry: ModelRegistry, sessions: SessionManager, secret: bytes | None
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._secret = secret

    def export(self, session: Session, *, with_identity: bool = False) -> bytes:
        """The session's snapshot, bound to its model version and weights."""
        served = self._registry.served(session.key)
        state = served.store.read(session.slot)
        record = None
        if with_identity:
            record = snapshot.SessionIdentity(
                session.session_id, session.identity, session.created_at, session.sequence
            )
        return snapshot.encode(
            snapshot.Snapshot(
                model=session.model,
                version=session.version,
                weights_sha256=served.model.weights_sha256,
                step_count=state.step_count,
                state_names=[s.input_name for s in served.manifest.states],
                states=state.states,
                session=record,
                last_output=state.last_output,
            ),
            self._secret,
        )

    def load(self, data: bytes, identity: str) -> Session:
        """A new session owned by `identity`, continuing from an exported snapshot."""
        return self._admit(snapshot.decode(data, self._secret), identity)

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
                )
        return served

    async def save(self, directory: Path) -> None:
        """Write every live session, with its id and owner, to the directory's sessions file."""
        blobs = [self.export(s, with_identity=True) for s in self._sessions.live()]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / snapshot.FILE_NAME
        count = await asyncio.to_thread(snapshot.write_file, path, blobs)
        log.info("saved %d sessions to %s", count, path)

    async def restore(self, directory: Path) -> None:
        """Bring back the sessions saved by `save`, then delete the file (they live in memory)."""
        path = directory / snapshot.FILE_NAME
        if not path.is_file():
            return
        try:
            blobs = await asyncio.to_thread(snapshot.read_file, path)
        except (OSError, InvalidSnapshot) as err:
            log.error("cannot read saved sessions %s: %s; starting without them", path, err)
            path.replace(path.with_name(path.name + ".unreadable"))
            return
        restored = 0
        for blob in blobs:
            try:
                decoded = snapshot.decode(blob, self._secret)
                owner = decoded.session.identity if decoded.session else ""
                self._admit(decoded, owner, saved=True)
                restored += 1
            except (RnnServeError, ValueError) as err:
                metrics.EVICTIONS.labels("dropped").inc()
                log.warning("a saved session was not restored: %s", err)
        # A second start must not restore stale copies of sessions that live on in memory now.
        path.unlink()
        log.info("restored %d of %d saved sessions from %s", restored, len(blobs), path)
