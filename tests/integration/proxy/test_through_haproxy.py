"""Two rnnserve processes behind a real HAProxy (deploy/haproxy/haproxy.cfg): clean stream ends,
session affinity, balancing, and a killed backend taken out by the gRPC health check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rnnserve.client import Client, NotFound
from rnnserve.client.load.config import LoadConfig
from rnnserve.client.load.runner import run_load
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from scale_servers import HAProxy, Worker, haproxy_server, require_binary, rnnserve_workers
from tiny_models import GRU_LM

pytestmark = pytest.mark.slow  # real processes: two servers and a proxy per module
CLIENT_ID = "proxy-test"
IDENTITY = (("x-client-id", CLIENT_ID),)


@pytest.fixture(scope="module")
def cluster(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Worker], HAProxy]]:
    require_binary("haproxy", "haproxy")  # skip before starting anything
    workdir = tmp_path_factory.mktemp("proxy")
    with (
        rnnserve_workers(2, tiny_repository, workdir) as workers,
        haproxy_server(workers, workdir) as proxy,
    ):
        yield workers, proxy


def _holders(workers: list[Worker], session_ids: list[str]) -> dict[str, list[int]]:
    """Which workers hold each session, asked of each worker directly (not through the proxy)."""
    holders: dict[str, list[int]] = {session_id: [] for session_id in session_ids}
    for index, worker in enumerate(workers):
        with grpc.insecure_channel(worker.address) as channel:
            stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
            for session_id in session_ids:
                try:
                    request = pb.GetSessionRequest(session_id=session_id)
                    stub.GetSession(request, timeout=5, metadata=IDENTITY)
                    holders[session_id].append(index)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
    return holders


def test_streams_end_ok_through_the_proxy(cluster: tuple[list[Worker], HAProxy]) -> None:
    # The measured bug: a stream's end came back CANCELLED through the proxy (1-17 per run) and
    # a failed half-close crashed rnnserve-load. Every session must now end with OK.
    _, proxy = cluster
    for _run in range(3):
        config = LoadConfig(
            target=proxy.address,
            model=GRU_LM,
            mode="stream",
            concurrency=32,
            steps=4,
            sessions=200,
            warmup_messages=4,
        )
        result = run_load(config)
        assert result.summary.codes == {"OK": 200 * 4}
        assert result.summary.sessions_done == 200


def test_every_call_of_a_session_reaches_the_process_holding_it(
    cluster: tuple[list[Worker], HAProxy],
) -> None:
    # Memory mode: a call that reached the other process would answer NOT_FOUND.
    workers, proxy = cluster
    session_ids = []
    with Client(proxy.address, client_id=CLIENT_ID, timeout=10) as client:
        for _ in range(12):
            session = client.session(GRU_LM)
            session.feed([1, 2])
            with session.open_stream() as stream:
                stream.feed([3])
            outputs = list(session.stream([[4], [5]]))
            assert len(outputs) == 2
            session.generate(max_tokens=2, seed=1).read()
            attached = client.attach(session.session_id)
            assert attached.feed([6]).step_count == 8  # 2 + 1 + 2 + 2 generated + 1
            snapshot = session.snapshot()
            restored = client.restore(snapshot)  # a new session, routed by its own header
            assert restored.feed([7]).step_count == 9
            session_ids += [session.session_id, restored.session_id]
    holders = _holders(workers, session_ids)
    assert all(len(where) == 1 for where in holders.values()), holders


def test_new_sessions_are_balanced_and_the_header_is_what_routes(
    cluster: tuple[list[Worker], HAProxy],
) -> None:
    workers, proxy = cluster
    with Client(proxy.address, client_id=CLIENT_ID, timeout=10) as client:
        session_ids = [client.session(GRU_LM).session_id for _ in range(20)]
    holders = _holders(workers, session_ids)
    per_worker = [sum(where == [index] for where in holders.values()) for index in range(2)]
    assert sum(per_worker) == 20
    assert min(per_worker) >= 1, per_worker
    # Without the header, the proxy balances a session's calls like any other: some miss.
    misses = 0
    with grpc.insecure_channel(proxy.address) as channel:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        for session_id in session_ids:
            try:
                stub.GetSession(
                    pb.GetSessionRequest(session_id=session_id), timeout=5, metadata=IDENTITY
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                misses += 1
    assert misses >= 1


def test_a_killed_backend_leaves_new_sessions_to_the_survivor(
    tiny_repository: Path, tmp_path: Path
) -> None:
    require_binary("haproxy", "haproxy")
    with (
        rnnserve_workers(2, tiny_repository, tmp_path) as workers,
        haproxy_server(workers, tmp_path) as proxy,
        Client(proxy.address, client_id=CLIENT_ID, timeout=10) as client,
    ):
        before = [client.session(GRU_LM) for _ in range(8)]
        holders = _holders(workers, [s.session_id for s in before])
        on_victim = [s for s in before if holders[s.session_id] == [0]]
        on_survivor = [s for s in before if holders[s.session_id] == [1]]
        workers[0].kill()
        seconds = proxy.wait_for_states({"worker1": "DOWN", "worker2": "UP"})
        print(f"health check took worker1 out {seconds:.1f} s after kill -9")
        for _ in range(10):
            with client.session(GRU_LM) as session:
                assert session.feed([1, 2, 3]).step_count == 3
        fresh = client.session(GRU_LM)
        assert _holders(workers[1:], [fresh.session_id]) == {fresh.session_id: [0]}
        for session in on_survivor:  # the survivor's sessions carry on
            assert session.feed([4]).step_count == 1
        # Memory mode keeps a session in its process only: the victim's are gone (the redis
        # state tier is what lets a survivor continue them).
        for session in on_victim:
            with pytest.raises(NotFound):
                session.feed([4])
