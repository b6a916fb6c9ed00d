"""HAProxy's check of each backend is gRPC health: SERVING is up, NOT_SERVING is down."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from scale_servers import haproxy_server, require_binary

pytestmark = pytest.mark.slow  # a real proxy and its check intervals


@pytest.fixture
def health_servers() -> Iterator[list[tuple[str, health.HealthServicer]]]:
    """Two gRPC servers with only the standard health service, both SERVING."""
    running = []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        running.append((server, f"127.0.0.1:{port}", servicer))
    yield [(address, servicer) for _, address, servicer in running]
    for server, _, _ in running:
        server.stop(None)


def test_the_proxy_follows_each_backends_grpc_health(
    health_servers: list[tuple[str, health.HealthServicer]], tmp_path: Path
) -> None:
    require_binary("haproxy", "haproxy")
    (first, first_health), (second, _) = health_servers
    with haproxy_server([first, second], tmp_path) as proxy:
        first_health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # e.g. draining
        proxy.wait_for_states({"worker1": "DOWN", "worker2": "UP"})
        first_health.set("", health_pb2.HealthCheckResponse.SERVING)
        proxy.wait_for_states({"worker1": "UP", "worker2": "UP"})
