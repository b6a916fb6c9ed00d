"""The Redis state tier against a real redis-server: durability, faults, bad records, eviction."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis_helpers import first_output, step_retrying
from rnnserve.server import snapshot
from rnnserve.v1 import rnnserve_pb2 as pb
from scale_servers import RedisServer, redis_server
from server_helpers import Running, expect_error, identity, open_session, step, tokens
from tiny_models import GRU_LM

redis = pytest.importorskip("redis", reason="the redis client (extra `redis`) is not installed")

INPUTS = [[1, 2], [3], [4, 5, 6], [2], [7], [1, 1], [3]]


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        yield server


def tier(server: RedisServer, **overrides: object) -> dict[str, object]:
    """Settings of a server on the redis state tier (1 s leases: failover tests stay short)."""
    return {
        "state_store": "redis",
        "redis_url": server.url,
        "owner_lease_s": 1.0,
        **overrides,
    }


def record(server: RedisServer, session_id: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return dict(client.hgetall(f"rnnserve:s:{session_id}"))
    finally:
        client.close()


async def test_sync_replies_after_redis_holds_the_state(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    running = await serve(**tier(redis_aof, durability="sync", instance_id="a"))
    session = await open_session(running.stub, GRU_LM)
    for count, ids in enumerate(INPUTS[:3]):
        result = await step(running.stub, session, tokens(ids))
        # sync: what the reply says is durable is in Redis the moment the reply arrives
        assert result.HasField("durable_step_count")
        assert result.durable_step_count == result.step_count
        stored = record(redis_aof, session)
        assert int(stored[b"step"]) == result.step_count, f"after message {count}"
        assert stored[b"owner"] == b"a"
    info = await running.stub.GetSession(
        pb.GetSessionRequest(session_id=session), metadata=identity("alice")
    )
    assert info.session.durable_step_count == info.session.step_count == 6


async def test_memory_store_reports_no_durable_step_count(rpc: Running) -> None:
    session = await open_session(rpc.stub, GRU_LM)
    result = await step(rpc.stub, session, tokens([1, 2]))
    assert result.step_count == 2
    assert not result.HasField("durable_step_count")  # nothing survives a crash of the process


async def test_redis_down_is_unavailable_state_unchanged_and_recovers(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    running = await serve(**tier(redis_aof, durability="sync"))
    session = await open_session(running.stub, GRU_LM)
    twin = await open_session(running.stub, GRU_LM)
    for ids in INPUTS[:2]:
        await step(running.stub, session, tokens(ids))
        await step(running.stub, twin, tokens(ids))
    redis_aof.stop(signal.SIGKILL)
    error = await expect_error(step(running.stub, session, tokens([4])))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in (error.details() or "") and "retry" in (error.details() or "")
    redis_aof.start()  # same port, AOF replayed: the server reconnects by itself
    mine = await step(running.stub, session, tokens([4]))
    theirs = await step(running.stub, twin, tokens([4]))
    # the refused step changed nothing: both are at the same step, with the same outputs
    assert mine.step_count == theirs.step_count == 4
    np.testing.assert_array_equal(first_output(mine), first_output(theirs))
    assert mine.durable_step_count == 4


async def test_sessions_survive_a_redis_restart_with_aof(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer, tiny_repository: Path
) -> None:
    first = await serve(**tier(redis_aof, instance_id="first"))
    reference = await serve()  # the in-memory store: the uninterrupted twin
    session = await open_session(first.stub, GRU_LM)
    twin = await open_session(reference.stub, GRU_LM)
    for ids in INPUTS[:3]:
        await step(first.stub, session, tokens(ids))
        await step(reference.stub, twin, tokens(ids))
    await first.server.stop(1.0)  # graceful: leases released
    redis_aof.stop(signal.SIGKILL)  # a crash of Redis itself; the AOF has every write
    redis_aof.start()
    second = await serve(**tier(redis_aof, instance_id="second"))
    count = sum(len(ids) for ids in INPUTS[:3])
    for ids in INPUTS[3:]:
        mine, _ = await step_retrying(second.stub, session, ids, count)
        theirs = await step(reference.stub, twin, tokens(ids))
        count += len(ids)
        np.testing.assert_array_equal(first_output(mine), first_output(theirs))
        assert mine.step_count == theirs.step_count


async def test_a_bad_record_fails_only_its_own_session(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    first = await serve(**tier(redis_aof, instance_id="first"))
    garbage, other_weights, healthy = [await open_session(first.stub, GRU_LM) for _ in range(3)]
    for session in (garbage, other_weights, healthy):
        await step(first.stub, session, tokens([1, 2]))
    await first.server.stop(1.0)  # graceful: records written, leases released
    client = redis.Redis.from_url(redis_aof.url)
    try:
        client.hset(
            f"rnnserve:s:{garbage}", "snap", b"not a snapshot, but long enough to be read" * 2
        )
        # a well-formed record taken with other weights (another build of the same version)
        key = f"rnnserve:s:{other_weights}"
        decoded = snapshot.decode(client.hget(key, "snap"))
        forged = snapshot.Snapshot(**{**decoded.__dict__, "weights_sha256": "0" * 64})
        client.hset(key, "snap", snapshot.encode(forged))
    finally:
        client.close()
    second = await serve(**tier(redis_aof, instance_id="second"))
    for session, why in ((garbage, "magic"), (other_weights, "other weights")):
        error = await expect_error(step(second.stub, session, tokens([3])))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "session_id" in (error.details() or "") and why in (error.details() or "")
    result = await step(second.stub, healthy, tokens([3]))
    assert result.step_count == 3  # the other sessions load and continue


async def test_evicted_sessions_reload_and_equal_their_twins(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    cached = await serve(**tier(redis_aof, session_cache_size=2))
    loads_before = REGISTRY.get_sample_value("rnnserve_state_tier_loads_total") or 0.0
    reference = await serve()
    sessions = [await open_session(cached.stub, GRU_LM) for _ in range(5)]
    twins = [await open_session(reference.stub, GRU_LM) for _ in range(5)]
    for ids in INPUTS[:3]:
        for session, twin in zip(sessions, twins, strict=True):
            mine = await step(cached.stub, session, tokens(ids))
            theirs = await step(reference.stub, twin, tokens(ids))
            np.testing.assert_array_equal(first_output(mine), first_output(theirs))
            assert mine.step_count == theirs.step_count
            # the process holds a working set, not every session
            assert len(cached.server.engine.sessions) <= 2
    # 5 sessions in a cache of 2: at least 3 of them reloaded from Redis in every round
    loads = (REGISTRY.get_sample_value("rnnserve_state_tier_loads_total") or 0.0) - loads_before
    assert loads >= 3 * len(INPUTS[:3])


async def test_a_step_whose_reply_was_lost_is_answered_again_not_run_twice(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    """The client never saw the reply of its last message (the process that ran it died after
    Redis had the step): it sends the message again at the step count it was sent at, and the
    process holding the session now answers it from the reply kept with the state — the same
    outputs, the step not applied twice — here and on another process that loads the record."""
    first = await serve(**tier(redis_aof, durability="sync", instance_id="first"))
    reference = await serve()
    session = await open_session(first.stub, GRU_LM)
    twin = await open_session(reference.stub, GRU_LM)
    for ids in INPUTS[:3]:
        answered = await step(first.stub, session, tokens(ids))
        await step(reference.stub, twin, tokens(ids))
    start = answered.step_count - len(INPUTS[2])

    again = await step(first.stub, session, tokens(INPUTS[2]), expected_step_count=start)
    assert again == answered  # outputs, step count, durable step count: the reply, whole
    assert int(record(redis_aof, session)[b"step"]) == answered.step_count
    last_only = await step(
        first.stub,
        session,
        tokens(INPUTS[2]),
        expected_step_count=start,
        output=pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST),
    )
    np.testing.assert_array_equal(first_output(last_only), first_output(answered)[-1:])
    # Another message at that step count is out of order, as ever; so is an older step count.
    for ids, expected in ((INPUTS[3], start), (INPUTS[1], start - len(INPUTS[1]))):
        error = await expect_error(
            step(first.stub, session, tokens(ids), expected_step_count=expected)
        )
        assert error.code() == grpc.StatusCode.ABORTED
        assert "expected_step_count" in (error.details() or "")

    await first.server.stop(1.0)  # the record stays in Redis, with the kept reply
    second = await serve(**tier(redis_aof, durability="sync", instance_id="second"))
    again = await step(second.stub, session, tokens(INPUTS[2]), expected_step_count=start)
    np.testing.assert_array_equal(first_output(again), first_output(answered))
    assert again.step_count == answered.step_count
    mine = await step(second.stub, session, tokens(INPUTS[3]))
    theirs = await step(reference.stub, twin, tokens(INPUTS[3]))
    np.testing.assert_array_equal(first_output(mine), first_output(theirs))
    assert mine.step_count == theirs.step_count


async def test_a_kept_reply_that_fails_its_check_is_never_answered(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    first = await serve(**tier(redis_aof, durability="sync", instance_id="first"))
    session = await open_session(first.stub, GRU_LM)
    answered = await step(first.stub, session, tokens([1, 2]))
    await first.server.stop(1.0)
    client = redis.Redis.from_url(redis_aof.url)
    try:
        key = f"rnnserve:s:{session}"
        kept = bytearray(client.hget(key, "reply"))
        kept[len(kept) // 2] ^= 0xFF  # one flipped byte among the kept outputs
        client.hset(key, "reply", bytes(kept))
    finally:
        client.close()
    second = await serve(**tier(redis_aof, durability="sync", instance_id="second"))
    error = await expect_error(step(second.stub, session, tokens([1, 2]), expected_step_count=0))
    assert error.code() == grpc.StatusCode.ABORTED  # refused as out of order: no made-up reply
    result = await step(second.stub, session, tokens([3]))
    assert result.step_count == answered.step_count + 1  # the session itself is unharmed


async def test_batch_gathers_a_sessions_steps_into_one_write_and_reports_the_lag(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    running = await serve(**tier(redis_aof, durability="batch", batch_interval_s=3.0))
    session = await open_session(running.stub, GRU_LM)
    assert int(record(redis_aof, session)[b"step"]) == 0  # a new session is written at once
    results = [await step(running.stub, session, tokens(ids)) for ids in INPUTS[:4]]
    # Within the interval nothing more is written, and every reply says so.
    assert [r.durable_step_count for r in results] == [0, 0, 0, 0]
    assert int(record(redis_aof, session)[b"step"]) == 0
    final = results[-1].step_count
    for _ in range(100):  # then one write holds the four steps
        await asyncio.sleep(0.05)
        if int(record(redis_aof, session)[b"step"]) == final:
            break
    info = await running.stub.GetSession(
        pb.GetSessionRequest(session_id=session), metadata=identity("alice")
    )
    assert info.session.durable_step_count == info.session.step_count == final


async def test_the_per_principal_cap_holds_over_replicas_and_evicted_sessions(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    """max_sessions_per_principal counts a principal's sessions in Redis: a second replica and
    the sessions a bounded cache evicted from memory count as much as those held."""
    cap = {"max_sessions_per_principal": 3}
    first = await serve(**tier(redis_aof, session_cache_size=1, instance_id="a", **cap))
    second = await serve(**tier(redis_aof, instance_id="b", **cap))
    held = [await open_session(first.stub, GRU_LM) for _ in range(2)]
    assert len(first.server.engine.sessions) == 1  # the other one lives in Redis only
    held.append(await open_session(second.stub, GRU_LM))
    for running in (first, second):
        error = await expect_error(open_session(running.stub, GRU_LM))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_sessions_per_principal" in (error.details() or "")
    # Another principal is not affected; a closed session makes room on any replica.
    await open_session(second.stub, GRU_LM, who="bob")
    await first.stub.CloseSession(
        pb.CloseSessionRequest(session_id=held[0]), metadata=identity("alice")
    )
    await open_session(second.stub, GRU_LM)
    # The evicted session still works (and still counts): its next call loads it.
    result = await step(first.stub, held[1], tokens([1, 2]))
    assert result.step_count == 2


async def test_expired_sessions_leave_the_principals_count(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer
) -> None:
    running = await serve(
        **tier(redis_aof, session_cache_size=1, session_ttl_s=1.0, max_sessions_per_principal=2)
    )
    for _ in range(2):
        await open_session(running.stub, GRU_LM)
    error = await expect_error(open_session(running.stub, GRU_LM))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await asyncio.sleep(1.5)  # both records expire in Redis (one was never back in memory)
    await open_session(running.stub, GRU_LM)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_stream_step_guarded_by_its_step_count(
    serve: Callable[..., Awaitable[Running]], redis_aof: RedisServer, store: str
) -> None:
    """StreamRequest.expected_step_count: a step sent again at the count it was first sent at is
    answered again on the state tier (ABORTED in-band in memory mode, where nothing is kept); a
    wrong count is ABORTED in-band either way, and the stream goes on."""
    running = await serve(**(tier(redis_aof) if store == "redis" else {}))
    session = await open_session(running.stub, GRU_LM)
    call = running.stub.Stream(metadata=identity("alice"))
    await call.write(pb.StreamRequest(open=pb.OpenSession(session_id=session)))
    assert (await call.read()).session.session_id == session
    await call.write(pb.StreamRequest(request_id="1", step=tokens([1, 2])))
    first = (await call.read()).result
    await call.write(
        pb.StreamRequest(request_id="again", step=tokens([1, 2]), expected_step_count=0)
    )
    again = await call.read()
    assert again.request_id == "again"
    if store == "redis":
        assert again.result == first
    else:
        assert (again.error.code_name, again.error.field) == ("ABORTED", "expected_step_count")
    await call.write(pb.StreamRequest(request_id="late", step=tokens([3]), expected_step_count=7))
    late = await call.read()
    assert (late.error.code_name, late.error.field) == ("ABORTED", "expected_step_count")
    await call.write(pb.StreamRequest(request_id="next", step=tokens([3]), expected_step_count=2))
    assert (await call.read()).result.step_count == 3  # the step ran once, the stream goes on
    await call.done_writing()
