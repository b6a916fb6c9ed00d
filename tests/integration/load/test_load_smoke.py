"""Smoke run of the load generator against a real in-process rnnserve over the tiny models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from rnnserve.client.load import LoadConfig, format_table, run_load_async
from server_helpers import Running
from tiny_models import LSTM_LM, REGRESSOR


@pytest.mark.parametrize("mode", ["stream", "step", "generate", "predict"])
async def test_every_mode_runs_clean_against_rnnserve(
    serve: Callable[..., Awaitable[Running]], mode: str
) -> None:
    running = await serve(metrics_port=0)
    config = LoadConfig(
        target=running.address,
        model=LSTM_LM,
        mode=mode,
        concurrency=4,
        steps=15,
        warmup_messages=2,
        metrics_url=f"http://127.0.0.1:{running.server.metrics_port}/metrics",
    )
    result = await run_load_async(config)
    summary = result.summary
    assert summary.codes == {"OK": 60}
    assert summary.sessions_done == 4
    assert result.model.described and result.model.vocab_size == 20
    # The server's own histograms saw the run: every timed step went through its scheduler.
    assert result.server is not None
    assert result.server.steps_computed >= 60
    assert result.server.batch_size >= 1.0
    assert "Server (its own metrics" in format_table(result)


async def test_chunks_and_feature_models(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve()
    config = LoadConfig(
        target=running.address,
        model=REGRESSOR,
        concurrency=3,
        steps=5,
        steps_per_message=16,
        start_position=100,
    )
    summary = (await run_load_async(config)).summary
    assert summary.codes == {"OK": 15}
    assert summary.steps_ok == 15 * 16


async def test_server_errors_are_reported_by_code(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(max_sessions=2)
    config = LoadConfig(
        target=running.address, model=LSTM_LM, mode="step", concurrency=4, steps=5,
        warmup_messages=0,
    )  # fmt: skip
    summary = (await run_load_async(config)).summary
    # Two sessions fit; the other two opens are refused, and the run still ends by itself.
    assert summary.codes == {"OK": 10, "RESOURCE_EXHAUSTED": 2}


async def test_a_model_the_server_lacks_fails_fast(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve()
    config = LoadConfig(target=running.address, model="no-such-model")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_load_async(config)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("window", [8, 64])
async def test_pipelined_streams_get_every_reply(rpc: Running, window: int) -> None:
    """--window W: up to W messages in flight per stream, every one answered and timed."""
    config = LoadConfig(
        target=rpc.address, model=LSTM_LM, concurrency=2, steps=50, window=window, warmup_messages=0
    )
    summary = (await run_load_async(config)).summary
    assert summary.codes == {"OK": 100}
    assert summary.latency.count == 100
