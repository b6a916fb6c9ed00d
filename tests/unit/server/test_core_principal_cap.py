"""max_sessions_per_principal: one principal cannot take every slot; counts follow every removal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiny_models as tm
from helpers_core import tokens
from rnnserve.server.errors import CapacityExceeded, SessionNotFound
from rnnserve.server.manifest import StateSpec
from rnnserve.server.sessions import SessionManager, principal_of
from rnnserve.server.state_store import StateStore

PREFIX = tokens(60, 3)


def _manager(now: list[float], *, cap: int, max_sessions: int = 100) -> SessionManager:
    spec = StateSpec(input_name="h0", output_name="hn", shape=[1, 4])
    stores = {("m", 1): StateStore([spec], capacity=2)}
    return SessionManager(
        stores,
        ttl_s=10,
        max_sessions=max_sessions,
        max_sessions_per_principal=cap,
        clock=lambda: now[0],
    )


def test_principal_is_the_identity_before_its_sub_identity() -> None:
    assert principal_of("alice") == "alice"
    assert principal_of("alice/worker-3") == "alice"
    assert principal_of("cert:svc/a/b") == "cert:svc"


def test_one_principal_is_capped_and_others_still_open_sessions() -> None:
    manager = _manager([0.0], cap=2)
    manager.create("m", 1, "alice")
    manager.create("m", 1, "alice/worker-1")  # a sub-identity counts for its principal
    with pytest.raises(CapacityExceeded, match="maximum of 2 live sessions") as caught:
        manager.create("m", 1, "alice/worker-2")
    assert "max_sessions_per_principal" in caught.value.message
    manager.create("m", 1, "bob")
    manager.create("m", 1, "bob")
    assert (manager.count_of("alice"), manager.count_of("bob"), len(manager)) == (2, 2, 4)


def test_close_gives_the_slot_back() -> None:
    manager = _manager([0.0], cap=1)
    first = manager.create("m", 1, "alice")
    manager.close(first.session_id, "alice")
    assert manager.count_of("alice") == 0
    manager.create("m", 1, "alice")
    assert manager.count_of("alice") == 1


def test_an_expired_session_gives_its_slot_back_reaped_or_not() -> None:
    now = [0.0]
    manager = _manager(now, cap=1)
    old = manager.create("m", 1, "alice")
    now[0] += 11  # idle past the TTL; the reaper has not run
    fresh = manager.create("m", 1, "alice")  # the cap reaps it first
    with pytest.raises(SessionNotFound) as caught:
        manager.get(old.session_id, "alice")
    assert caught.value.reason == "expired"
    assert manager.get(fresh.session_id, "alice") is fresh and manager.count_of("alice") == 1
    now[0] += 11
    assert manager.reap() == 1 and manager.count_of("alice") == 0  # the background reaper's way
    manager.create("m", 1, "alice")
    assert manager.count_of("alice") == 1


def test_an_evicted_session_leaves_its_principals_count() -> None:
    now = [0.0]
    manager = _manager(now, cap=5, max_sessions=2)
    manager.create("m", 1, "alice")
    manager.create("m", 1, "alice")
    now[0] += 11
    manager.create("m", 1, "bob")  # the server is full: reclaims one of alice's expired sessions
    assert (manager.count_of("alice"), manager.count_of("bob")) == (1, 1)


def test_a_principal_at_its_cap_may_restart_its_own_sequence() -> None:
    manager = _manager([0.0], cap=1)
    first = manager.create("m", 1, "alice", sequence="42")
    second = manager.create("m", 1, "alice", sequence="42")  # START again: the sequence restarts
    assert manager.count_of("alice") == 1 and second is not first
    assert manager.find_sequence("alice", "m", "42") is second


async def test_an_import_counts_and_is_capped(make_engine: Any) -> None:
    engine = await make_engine(max_sessions_per_principal=2)
    view = await engine.create_session(tm.GRU_LM, 0, "alice")
    data, _ = await engine.export_state(view.session_id, "alice")
    await engine.import_state(data, "alice")
    assert engine.sessions.count_of("alice") == 2
    with pytest.raises(CapacityExceeded, match="max_sessions_per_principal"):
        await engine.import_state(data, "alice/other")
    await engine.import_state(data, "bob")  # another principal imports the same snapshot
    assert (engine.sessions.count_of("alice"), engine.sessions.count_of("bob")) == (2, 1)


async def test_restored_sessions_count_for_their_owners(make_engine: Any, tmp_path: Path) -> None:
    settings = {"snapshot_dir": tmp_path / "snaps", "max_sessions_per_principal": 2}
    first = await make_engine(**settings)
    for owner in ("alice", "alice/worker", "bob"):
        await first.create_session(tm.GRU_LM, 0, owner)
    await first.stop(1.0)
    second = await make_engine(**settings)
    assert len(second.sessions) == 3
    assert (second.sessions.count_of("alice"), second.sessions.count_of("bob")) == (2, 1)
    with pytest.raises(CapacityExceeded):
        await second.create_session(tm.GRU_LM, 0, "alice")
    await second.create_session(tm.GRU_LM, 0, "bob")
