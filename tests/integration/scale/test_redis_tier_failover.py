"""Failover through the Redis state tier: a replica killed (kill -9) or paused and brought back.

Replica A is a real `rnnserve serve` process (so that it can be SIGKILLed or SIGSTOPped); replica
B runs in the test's process; an in-memory server runs the uninterrupted twin of each session.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from redis_helpers import first_output, step_retrying
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from scale_servers import RedisServer, redis_server, rnnserve_workers
from server_helpers import Running, expect_error, identity, open_session, step, tokens
from tiny_models import GRU_LM

redis = pytest.importorskip("redis", reason="the redis client (extra `redis`) is not installed")

pytestmark = pytest.mark.slow

INPUTS = [[1, 2], [3], [4, 5, 6], [2], [7], [1, 1], [3], [5], [6, 2]]
LEASE_S = "1.0"


@pytest.fixture
def redis_db(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        yield server


def flags(server: RedisServer, durability: str, instance: str) -> list[str]:
    return [
        "--state-store", "redis", "--redis-url", server.url, "--durability", durability,
        "--owner-lease-s", LEASE_S, "--instance-id", instance,
    ]  # fmt: skip


def stored_step(server: RedisServer, session_id: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.hget(f"rnnserve:s:{session_id}", "step"))
    finally:
        client.close()


@pytest.mark.parametrize("durability", ["sync", "batch"])
async def test_kill_9_loses_nothing_the_client_cannot_replay(
    durability: str,
    serve: Callable[..., Awaitable[Running]],
    redis_db: RedisServer,
    tmp_path: Path,
    tiny_repository: Path,
) -> None:
    reference = await serve()
    replica_b = await serve(
        state_store="redis",
        redis_url=redis_db.url,
        durability=durability,
        owner_lease_s=float(LEASE_S),
        instance_id="b",
    )
    twin = await open_session(reference.stub, GRU_LM)
    expected = [first_output(await step(reference.stub, twin, tokens(ids))) for ids in INPUTS]
    counts = np.cumsum([len(ids) for ids in INPUTS]).tolist()

    replica_flags = flags(redis_db, durability, "a")
    with rnnserve_workers(1, tiny_repository, tmp_path, *replica_flags) as (replica_a,):
        async with grpc.aio.insecure_channel(replica_a.address) as channel:
            stub_a = rnnserve_pb2_grpc.InferenceServiceStub(channel)
            session = await open_session(stub_a, GRU_LM)
            durable = 0
            for index, ids in enumerate(INPUTS[:5]):
                result = await step(stub_a, session, tokens(ids))
                np.testing.assert_array_equal(first_output(result), expected[index])
                assert result.durable_step_count <= result.step_count
                if durability == "sync":
                    assert result.durable_step_count == result.step_count
                durable = result.durable_step_count
        replica_a.process.send_signal(signal.SIGKILL)  # no graceful stop: memory is gone
        replica_a.process.wait(timeout=10)

    # B takes over once A's lease lapses; the client learns where the session stands ...
    info = None
    for _ in range(200):
        try:
            info = await replica_b.stub.GetSession(
                pb.GetSessionRequest(session_id=session), metadata=identity("alice")
            )
            break
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            await asyncio.sleep(0.05)
    assert info is not None
    resumed = info.session.step_count
    # ... which is never behind what A's replies called durable
    assert resumed >= durable
    if durability == "sync":
        assert resumed == counts[4]
    # ... and replays the inputs after it: outputs bit-identical to the uninterrupted twin
    start = counts.index(resumed) + 1 if resumed else 0
    for index in range(start, len(INPUTS)):
        at = counts[index - 1] if index else 0
        result, _ = await step_retrying(replica_b.stub, session, INPUTS[index], at)
        np.testing.assert_array_equal(first_output(result), expected[index])
        assert result.step_count == counts[index]


async def test_a_stale_replica_cannot_overwrite_newer_state(
    serve: Callable[..., Awaitable[Running]],
    redis_db: RedisServer,
    tiny_repository: Path,
    tmp_path: Path,
) -> None:
    reference = await serve()
    replica_b = await serve(
        state_store="redis", redis_url=redis_db.url, owner_lease_s=float(LEASE_S), instance_id="b"
    )
    twin = await open_session(reference.stub, GRU_LM)
    expected = [first_output(await step(reference.stub, twin, tokens(ids))) for ids in INPUTS]
    counts = np.cumsum([len(ids) for ids in INPUTS]).tolist()

    replica_flags = flags(redis_db, "sync", "a")
    with rnnserve_workers(1, tiny_repository, tmp_path, *replica_flags) as (replica_a,):
        async with grpc.aio.insecure_channel(replica_a.address) as channel:
            stub_a = rnnserve_pb2_grpc.InferenceServiceStub(channel)
            session = await open_session(stub_a, GRU_LM)
            for ids in INPUTS[:3]:
                await step(stub_a, session, tokens(ids))
            os.kill(replica_a.process.pid, signal.SIGSTOP)  # frozen: its lease lapses
            try:
                for index in (3, 4):  # B takes the session over and moves it on
                    result, _ = await step_retrying(
                        replica_b.stub, session, INPUTS[index], counts[index - 1]
                    )
                    np.testing.assert_array_equal(first_output(result), expected[index])
            finally:
                os.kill(replica_a.process.pid, signal.SIGCONT)
            # A wakes up still holding step 6 in memory: its step is refused, retryable ...
            error = await expect_error(step(stub_a, session, tokens(INPUTS[3])))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "another replica" in (error.details() or "")
            # ... and it keeps refusing (it dropped its copy; B holds the lease)
            again = await expect_error(step(stub_a, session, tokens(INPUTS[3])))
            assert again.code() == grpc.StatusCode.UNAVAILABLE
    # Redis still holds B's state, and B carries on exactly like the twin
    assert stored_step(redis_db, session) == counts[4]
    result = await step(replica_b.stub, session, tokens(INPUTS[5]))
    np.testing.assert_array_equal(first_output(result), expected[5])
    assert result.step_count == counts[5]
