"""The load generator end to end against the in-process echo server (the transport floor)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from echo_server import EchoService, start_echo_server
from rnnserve.client.load import LoadConfig, format_table, run_load_async
from rnnserve.client.load.cli import main
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc


@pytest.fixture
async def echo_target() -> AsyncIterator[str]:
    server, port = await start_echo_server("127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.mark.parametrize("mode", ["stream", "step", "generate", "predict"])
async def test_closed_loop_sends_sessions_times_steps(echo_target: str, mode: str) -> None:
    config = LoadConfig(target=echo_target, mode=mode, concurrency=3, steps=7, warmup_messages=2)
    result = await run_load_async(config)
    summary = result.summary
    assert summary.codes == {"OK": 21}
    assert summary.sessions_done == 3
    assert summary.steps_ok == 21
    assert summary.latency.count == 21
    assert 0 < summary.latency.p(50) <= summary.latency.p(99) <= summary.latency.max
    assert summary.first_output.count == 3
    assert summary.steps_per_s > 0
    assert result.model.described and result.model.vocab_size == 100


async def test_sessions_spread_over_several_connections(echo_target: str) -> None:
    config = LoadConfig(target=echo_target, concurrency=6, steps=4, connections=3)
    assert (await run_load_async(config)).summary.codes == {"OK": 24}


async def test_chunked_messages_count_every_step(echo_target: str) -> None:
    config = LoadConfig(target=echo_target, concurrency=2, steps=5, steps_per_message=64)
    summary = (await run_load_async(config)).summary
    assert summary.messages_ok == 10
    assert summary.steps_ok == 640
    assert summary.latency_per_step.p(50) == pytest.approx(summary.latency.p(50) / 64)


async def test_max_messages_and_duration_stop_the_run(echo_target: str) -> None:
    by_count = LoadConfig(target=echo_target, concurrency=4, steps=1000, max_messages=50)
    assert (await run_load_async(by_count)).summary.messages_ok == 50
    by_time = LoadConfig(target=echo_target, concurrency=2, steps=5, duration_s=0.5)
    summary = (await run_load_async(by_time)).summary
    assert summary.duration_s < 2.0
    assert summary.sessions_done > 2  # sessions keep opening until the time is up


async def test_open_loop_holds_the_target_rate(echo_target: str) -> None:
    config = LoadConfig(target=echo_target, concurrency=4, steps=10_000, rate=200, duration_s=1.0)
    summary = (await run_load_async(config)).summary
    assert 150 <= summary.messages_per_s <= 230


async def test_start_position_is_fed_before_timing(echo_target: str) -> None:
    config = LoadConfig(target=echo_target, concurrency=1, steps=3, start_position=10_000)
    summary = (await run_load_async(config)).summary
    assert summary.steps_ok == 3  # the 10,000 untimed steps are not counted


class _FlakyService(EchoService):
    """Every third step fails: RESOURCE_EXHAUSTED on Step, an in-band error on Stream."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def Step(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepResponse:
        self.calls += 1
        if self.calls % 3 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return await super().Step(request, context)

    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        async for request in request_iterator:
            if request.WhichOneof("kind") == "step":
                self.calls += 1
                if self.calls % 3 == 0:
                    error = pb.Error(code=10, code_name="ABORTED", message="busy")
                    yield pb.StreamResponse(error=error)
                    continue
                yield pb.StreamResponse(result=self._result(1, request.output))
            elif request.WhichOneof("kind") == "control":
                yield pb.StreamResponse(session=self._session())
                return
            else:
                yield pb.StreamResponse(session=self._session())


@pytest.mark.parametrize(("mode", "code"), [("step", "RESOURCE_EXHAUSTED"), ("stream", "ABORTED")])
async def test_errors_are_counted_by_status_code(mode: str, code: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(_FlakyService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        config = LoadConfig(
            target=f"127.0.0.1:{port}", mode=mode, concurrency=1, steps=30, warmup_messages=0
        )
        result = await run_load_async(config)
    finally:
        await server.stop(None)
    assert result.summary.codes == {"OK": 20, code: 10}
    assert f"{code}" in format_table(result)


async def test_unreachable_target_fails_fast() -> None:
    config = LoadConfig(target="127.0.0.1:1", concurrency=1, steps=1, timeout_s=2.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_load_async(config)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_prints_json_and_writes_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    server, port = loop.run_until_complete(start_echo_server("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        plot = tmp_path / "load.png"
        status = main(
            ["--target", f"127.0.0.1:{port}", "-c", "2", "-n", "20", "--json", "--plot", str(plot)]
        )
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    assert status == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["codes"] == {"OK": 40}
    assert data["summary"]["latency"]["percentiles"]["p99.9"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_an_unbounded_or_bad_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--concurrency", "0"])
    assert caught.value.code == 2
    assert "concurrency" in capsys.readouterr().err


async def test_progress_bar_reaches_the_end(
    echo_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = LoadConfig(target=echo_target, concurrency=2, steps=150, progress=True)
    await run_load_async(config)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "300/300" in bar and "100%" in bar
