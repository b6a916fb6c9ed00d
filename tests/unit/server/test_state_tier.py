"""RedisStateTier inside one engine, against a real redis-server: group commit, the three
durability modes, and a lost compare-and-set (no gRPC: the core only)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_core import ME, feed, tokens
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import SessionMoved
from rnnserve.server.state_tier import scripts
from scale_servers import RedisServer, redis_server
from tiny_models import GRU_LM

EngineFactory = Callable[..., Awaitable[InferenceEngine]]

redis = pytest.importorskip("redis", reason="the redis client (extra `redis`) is not installed")


@pytest.fixture
def redis_db(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def stored(server: RedisServer, session_id: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return dict(client.hgetall(f"rnnserve:s:{session_id}"))
    finally:
        client.close()


async def tiered(make_engine: EngineFactory, server: RedisServer, **more: Any) -> InferenceEngine:
    return await make_engine(state_store="redis", redis_url=server.url, **more)


async def test_one_write_per_batch(make_engine: EngineFactory, redis_db: RedisServer) -> None:
    engine = await tiered(make_engine, redis_db, durability="sync")
    assert engine.tier is not None
    ids = [(await engine.create_session(GRU_LM, 0, ME)).session_id for _ in range(32)]
    client = engine.tier._client
    assert client is not None
    writes: list[int] = []  # sessions per WRITE script call
    real_evalsha = client.evalsha

    def counted(sha: str, numkeys: int, *args: Any) -> Any:
        if sha == scripts.sha1(scripts.WRITE):
            writes.append(numkeys // 2)  # a record and its principal's key per session
        return real_evalsha(sha, numkeys, *args)

    client.evalsha = counted  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(engine.step(i, ME, tokens(n, 3), OutputOptions()) for n, i in enumerate(ids))  # type: ignore[arg-type]
    )
    # 32 sessions stepped in one scheduler batch: one round trip made all 32 durable
    assert writes == [32]
    assert all(o.durable_step_count == o.step_count == 3 for o in outcomes)
    assert all(int(stored(redis_db, i)[b"step"]) == 3 for i in ids)


async def test_batch_mode_replies_first_and_catches_up(
    make_engine: EngineFactory, redis_db: RedisServer
) -> None:
    engine = await tiered(make_engine, redis_db, durability="batch")
    assert engine.tier is not None
    session_id = (await engine.create_session(GRU_LM, 0, ME)).session_id
    outcome = await engine.step(session_id, ME, tokens(1, 4), OutputOptions())  # type: ignore[arg-type]
    # the reply did not wait: Redis still holds the created record (step 0)
    assert outcome.step_count == 4 and outcome.durable_step_count == 0
    assert int(stored(redis_db, session_id)[b"step"]) == 0
    session = engine.sessions.get(session_id, ME)
    await engine.tier.persist(session)  # the write the step queued
    view = await engine.get_session(session_id, ME)
    assert view.durable_step_count == view.step_count == 4
    assert int(stored(redis_db, session_id)[b"step"]) == 4
    assert engine.tier.durable_lag() == 0


async def test_none_mode_writes_only_at_stop(
    make_engine: EngineFactory, redis_db: RedisServer
) -> None:
    engine = await tiered(make_engine, redis_db, durability="none")
    session_id = (await engine.create_session(GRU_LM, 0, ME)).session_id
    await feed(engine, session_id, tokens(2, 5))
    assert stored(redis_db, session_id) == {}
    await engine.stop(0.5)
    record = stored(redis_db, session_id)
    assert int(record[b"step"]) == 5
    assert record[b"lease"] == b"0"  # released: another process may take it at once


async def test_a_lost_compare_and_set_undoes_the_step_and_drops_the_copy(
    make_engine: EngineFactory, redis_db: RedisServer
) -> None:
    engine = await tiered(make_engine, redis_db, durability="sync", owner_lease_s=30.0)
    session_id = (await engine.create_session(GRU_LM, 0, ME)).session_id
    await feed(engine, session_id, tokens(3, 2))
    # another process takes the session over (as after this one was paused past its lease)
    client = redis.Redis.from_url(redis_db.url)
    try:
        client.hset(f"rnnserve:s:{session_id}", mapping={"owner": "other", "lease": 2**50})
    finally:
        client.close()
    with pytest.raises(SessionMoved):
        await feed(engine, session_id, tokens(4, 1))
    assert session_id not in engine.sessions  # the stale copy is gone
    assert int(stored(redis_db, session_id)[b"step"]) == 2  # the newer owner's state is intact
    with pytest.raises(SessionMoved, match="another replica"):
        await feed(engine, session_id, tokens(4, 1))  # and the live lease keeps it away


async def test_reload_after_eviction_is_bit_identical(
    make_engine: EngineFactory, redis_db: RedisServer
) -> None:
    engine = await tiered(make_engine, redis_db, session_cache_size=1)
    reference = await make_engine()
    first = (await engine.create_session(GRU_LM, 0, ME)).session_id
    twin = (await reference.create_session(GRU_LM, 0, ME)).session_id
    np.testing.assert_array_equal(
        await feed(engine, first, tokens(5, 3)), await feed(reference, twin, tokens(5, 3))
    )
    other = (await engine.create_session(GRU_LM, 0, ME)).session_id
    await feed(engine, other, tokens(6, 2))
    assert first not in engine.sessions  # evicted: the cache holds one session
    np.testing.assert_array_equal(
        await feed(engine, first, tokens(7, 4)), await feed(reference, twin, tokens(7, 4))
    )


async def test_an_idle_copy_is_confirmed_and_never_served_stale(
    make_engine: EngineFactory, redis_db: RedisServer
) -> None:
    settings = {"durability": "sync", "owner_lease_s": 0.3}
    first = await tiered(make_engine, redis_db, instance_id="first", **settings)
    second = await tiered(make_engine, redis_db, instance_id="second", **settings)
    reference = await make_engine()
    session_id = (await first.create_session(GRU_LM, 0, ME)).session_id
    twin = (await reference.create_session(GRU_LM, 0, ME)).session_id
    for seed in (1, 2):
        await feed(first, session_id, tokens(seed, 2))
        await feed(reference, twin, tokens(seed, 2))
    # idle on `first` past its lease (only active sessions are renewed) ...
    while (lease := stored(redis_db, session_id)[b"lease"]) and int(lease) > _redis_ms(redis_db):
        await asyncio.sleep(0.05)
    # ... so `second` takes it over, moves it on, and stops (its lease released)
    for seed in (3, 4):
        await feed(second, session_id, tokens(seed, 2))
        await feed(reference, twin, tokens(seed, 2))
    await second.stop(0.5)
    # `first` still holds step 4 in memory: it must notice and continue from step 8
    np.testing.assert_array_equal(
        await feed(first, session_id, tokens(5, 2)), await feed(reference, twin, tokens(5, 2))
    )
    assert (await first.get_session(session_id, ME)).step_count == 10


def _redis_ms(server: RedisServer) -> int:
    """Redis's clock (what leases are measured on), in ms."""
    client = redis.Redis.from_url(server.url)
    try:
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000
    finally:
        client.close()


async def test_sessions_restored_from_snapshot_dir_get_their_records(
    make_engine: EngineFactory, redis_db: RedisServer, tmp_path: Path
) -> None:
    first = await tiered(make_engine, redis_db, snapshot_dir=tmp_path / "snapshots")
    session_id = (await first.create_session(GRU_LM, 0, ME)).session_id
    await feed(first, session_id, tokens(1, 3))
    await first.stop(0.5)  # saved to snapshot_dir (and written to Redis)
    client = redis.Redis.from_url(redis_db.url)
    try:
        client.delete(f"rnnserve:s:{session_id}")  # a Redis that lost its data
    finally:
        client.close()
    second = await tiered(make_engine, redis_db, snapshot_dir=tmp_path / "snapshots")
    assert session_id in second.sessions  # restored from the snapshot file ...
    assert int(stored(redis_db, session_id)[b"step"]) == 3  # ... and in Redis again


@pytest.mark.parametrize("secret", [None, "a signing secret"])
async def test_the_fast_record_encoding_is_the_snapshot_byte_for_byte(
    make_engine: EngineFactory, secret: str | None
) -> None:
    engine = await make_engine(snapshot_secret=secret)
    session_id = (await engine.create_session(GRU_LM, 0, ME)).session_id
    session = engine.sessions.get(session_id, ME)
    for seed, length in ((1, 3), (2, 1), (3, 17)):  # the step count changes the header's length
        assert engine.persistence.export_record(session) == engine.persistence.export(
            session, with_identity=True
        )
        await feed(engine, session_id, tokens(seed, length))
    assert engine.persistence.export_record(session) == engine.persistence.export(
        session, with_identity=True
    )
