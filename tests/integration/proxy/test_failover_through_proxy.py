"""Failover end to end: Redis, two rnnserve processes behind HAProxy, kill -9 of one mid-sequence;
the client library carries every session on, with outputs identical to an uninterrupted run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from rnnserve.client import AsyncClient, Client
from rnnserve.client.aio import AsyncSessionStream
from scale_servers import (
    HAProxy,
    Worker,
    haproxy_server,
    redis_server,
    require_binary,
    rnnserve_workers,
)
from tiny_models import GRU_LM

pytestmark = pytest.mark.slow  # Redis, two servers, a proxy, a health check to wait for
INPUTS = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [2], [3, 1], [4]]
SESSIONS = 8
KILL_AFTER = 4  # messages fed before the kill


def _feed(session: object, data: list[int]) -> list[float]:
    out = session.feed(data)  # type: ignore[attr-defined]
    return [float(v) for v in np.asarray(out.tensor).ravel()]


@contextmanager
def _cluster(
    tiny_repository: Path, tmp_path: Path, durability: str
) -> Iterator[tuple[list[Worker], HAProxy, Client]]:
    """Redis (AOF), two workers on it (owner lease 2 s), HAProxy, a client through it."""
    require_binary("haproxy", "haproxy")
    require_binary("redis-server", "redis-server")
    with redis_server(tmp_path / "redis", appendonly=True) as redis:
        flags = (
            "--state-store", "redis",
            "--redis-url", redis.url,
            "--durability", durability,
            "--owner-lease-s", "2",
        )  # fmt: skip
        with (
            rnnserve_workers(2, tiny_repository, tmp_path, *flags) as workers,
            haproxy_server(workers, tmp_path) as proxy,
            Client(proxy.address, client_id="failover", timeout=10) as client,
        ):
            yield workers, proxy, client


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_kill_9_of_a_replica_loses_no_stream_and_changes_no_output(
    tiny_repository: Path, tmp_path: Path, durability: str
) -> None:
    with _cluster(tiny_repository, tmp_path, durability) as (workers, proxy, client):
        with client.session(GRU_LM) as reference_session:
            reference = [_feed(reference_session, data) for data in INPUTS]
        sessions = [client.session(GRU_LM) for _ in range(SESSIONS)]
        created = proxy.server_counter("worker1", "stot")
        streams = [session.open_stream() for session in sessions]
        outputs: list[list[list[float]]] = [[] for _ in sessions]
        for data in INPUTS[:KILL_AFTER]:
            for index, stream in enumerate(streams):
                outputs[index].append(_feed(stream, data))
        # The victim holds some of the streams (each call counts once, when it starts).
        assert proxy.server_counter("worker1", "stot") > created
        workers[0].kill()
        for data in INPUTS[KILL_AFTER:]:
            for index, stream in enumerate(streams):
                outputs[index].append(_feed(stream, data))
        for stream in streams:
            stream.close()
        assert sum(result != reference for result in outputs) == 0


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_kill_9_of_a_replica_loses_no_session_and_changes_no_output(
    tiny_repository: Path, tmp_path: Path, durability: str
) -> None:
    with _cluster(tiny_repository, tmp_path, durability) as (workers, proxy, client):
        with client.session(GRU_LM) as reference_session:
            reference = [_feed(reference_session, data) for data in INPUTS]
        sessions = [client.session(GRU_LM) for _ in range(SESSIONS)]
        outputs: list[list[list[float]]] = [[] for _ in sessions]
        created = proxy.server_counter("worker1", "stot")
        for data in INPUTS[:KILL_AFTER]:
            for index, session in enumerate(sessions):
                outputs[index].append(_feed(session, data))
        # The victim holds sessions: the feeds of at least one went to it.
        assert proxy.server_counter("worker1", "stot") - created >= KILL_AFTER
        workers[0].kill()
        for data in INPUTS[KILL_AFTER:]:
            for index, session in enumerate(sessions):
                outputs[index].append(_feed(session, data))
        lost = sum(result != reference for result in outputs)
        assert lost == 0
        assert proxy.server_states()["worker1"] == "DOWN"


@pytest.mark.parametrize("durability", ["sync", "batch"])
async def test_64_concurrent_streams_through_a_kill_9_mid_sequence(
    tiny_repository: Path, tmp_path: Path, durability: str
) -> None:
    """The issue's shape: 64 streams open and feeding at once, one replica killed while calls
    are in flight (half of the streams' 4th replies have arrived). Every stream completes with
    the outputs of an uninterrupted run. A step can be durable in Redis while its reply dies with
    the process (sync: always written before the reply; batch: when the batch's write went out
    before the reply did): the client sends it again at the step count it was sent at, and the
    survivor answers it from the reply kept with the state instead of running it twice."""
    streams_count = 64
    with _cluster(tiny_repository, tmp_path, durability) as (workers, proxy, client):
        with client.session(GRU_LM) as reference_session:
            reference = [_feed(reference_session, data) for data in INPUTS]
        async with AsyncClient(proxy.address, client_id="failover", timeout=30) as aio:
            sessions = [await aio.session(GRU_LM).__aenter__() for _ in range(streams_count)]
            streams = [await session.open_stream().__aenter__() for session in sessions]
            answered = 0
            kill_at = streams_count * (KILL_AFTER - 1) + streams_count // 2

            async def run(stream: AsyncSessionStream) -> list[list[float]]:
                nonlocal answered
                outputs = []
                for data in INPUTS:
                    out = await stream.feed(data)
                    outputs.append([float(v) for v in np.asarray(out.tensor).ravel()])
                    answered += 1
                    if answered == kill_at:
                        workers[0].kill()  # other streams' calls are in flight on the victim
                await stream.close()
                return outputs

            results = await asyncio.gather(*(run(s) for s in streams), return_exceptions=True)
        assert workers[0].process.poll() is not None  # the kill happened mid-run
        survivor_log = (tmp_path / "worker1.log").read_text()
        answered_again = survivor_log.count("answered again from its kept reply")
        failed = [r for r in results if isinstance(r, BaseException)]
        print(
            f"{durability}: {streams_count - len(failed)} of {streams_count} streams completed, "
            f"{answered_again} lost replies answered again by the survivor"
        )
        assert failed == []
        assert all(result == reference for result in results)
