"""Operations: health follows loading and shutdown, reflection lists the services, metrics serve."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rnnserve.server import cli
from rnnserve.server.app import build_server
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from server_helpers import (
    Running,
    hold_model,
    identity,
    make_settings,
    open_session,
    step,
    tokens,
)
from tiny_models import GRU_LM

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "rnnserve.v1.InferenceService"


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def test_not_serving_until_models_are_loaded(tiny_repository: Path) -> None:
    server, port = build_server(make_settings(tiny_repository))
    loading = asyncio.Event()
    real_start = server.engine.start

    async def slow_start() -> None:
        await loading.wait()
        await real_start()

    server.engine.start = slow_start  # type: ignore[method-assign]
    starting = asyncio.ensure_future(server.start())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(100):  # wait for the port to accept calls
            try:
                status = await _health(channel)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
        assert status == NOT_SERVING
        assert await _health(channel, SERVICE) == NOT_SERVING
        loading.set()
        await starting
        assert await _health(channel) == SERVING
        assert await _health(channel, SERVICE) == SERVING
        exit_code = await asyncio.to_thread(
            cli.main, ["healthcheck", "--port", str(port), "--timeout", "5"]
        )
        assert exit_code == cli.HEALTH_EXIT_SERVING
    await server.stop(1.0)


async def test_not_serving_on_shutdown_and_in_flight_steps_finish(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve()
    watcher = health_pb2_grpc.HealthStub(running.channel).Watch(
        health_pb2.HealthCheckRequest(service="")
    )
    assert (await watcher.read()).status == SERVING
    a = await open_session(running.stub, GRU_LM)
    with hold_model(running, GRU_LM) as hold:
        in_flight = asyncio.ensure_future(step(running.stub, a, tokens([1, 2, 3])))
        while not hold.entered.is_set():
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(running.server.stop(5.0))
        assert (await watcher.read()).status == NOT_SERVING
        assert not running.server.engine.ready
        hold.release.set()
        result = await in_flight  # drained, not cut off
    assert result.step_count == 3
    await stopping
    watcher.cancel()


async def test_shutdown_ends_open_streams_with_unavailable(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve()
    queue: asyncio.Queue[pb.StreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        while (request := await queue.get()) is not None:
            yield request

    call = running.stub.Stream(requests(), metadata=identity("alice"))
    await queue.put(pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))))
    assert (await call.read()).HasField("session")
    await running.server.engine.stop(1.0)  # the core refuses new work from now on
    await queue.put(pb.StreamRequest(step=tokens([1])))
    try:
        reply = await call.read()
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (err.details() or "")
    else:
        raise AssertionError(f"expected the stream to end, got {reply}")
    await queue.put(None)


async def test_reflection_lists_and_describes_the_services(rpc: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(rpc.channel)

    async def ask(**fields: Any) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(**fields)

    replies = [r async for r in stub.ServerReflectionInfo(ask(list_services=""))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert "inference.GRPCInferenceService" in names  # the second front door
    replies = [r async for r in stub.ServerReflectionInfo(ask(file_containing_symbol=SERVICE))]
    files = replies[0].file_descriptor_response.file_descriptor_proto
    assert any(b"rnnserve/v1/rnnserve.proto" in f for f in files)


async def test_metrics_endpoint_counts_requests(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(metrics_port=0)
    await open_session(running.stub, GRU_LM)
    port = running.server.metrics_port
    assert port

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    text = await asyncio.to_thread(fetch)
    assert 'rnnserve_requests_total{code="OK",method="CreateSession"}' in text
    assert "rnnserve_request_latency_seconds_bucket" in text


async def test_request_id_is_echoed(rpc: Running) -> None:
    stub = rnnserve_pb2_grpc.InferenceServiceStub(rpc.channel)
    call = stub.ListModels(pb.ListModelsRequest(), metadata=(("x-request-id", "trace-42"),))
    reply = await call
    assert len(reply.models) == 6
    assert ("x-request-id", "trace-42") in tuple(await call.trailing_metadata())
