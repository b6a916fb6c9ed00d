"""The AsyncClient against a fake server: the same behaviour as the sync client, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from client_fakes import BIDIRECTIONAL, MODEL, FakeServer, expected_logits
from rnnserve.client import (
    Aborted,
    AsyncClient,
    DeadlineExceeded,
    FinishReason,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    StepOutput,
    Unavailable,
)

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
async def client(fake_server: FakeServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        fake_server.target, client_id="bob", timeout=10, retry=FAST_RETRY
    ) as client:
        yield client


async def test_models_feed_and_metadata(client: AsyncClient, fake_server: FakeServer) -> None:
    assert [m.name for m in await client.models()] == [MODEL, BIDIRECTIONAL]
    async with client.session(MODEL) as session:
        output = await session.feed("abc")
        np.testing.assert_array_equal(output.tensor, expected_logits([0, 1, 2], 0))
        assert output.labels == ("b", "c", "d") and session.step_count == 3
        with pytest.raises(InvalidArgument) as caught:
            await session.feed([1, 5])
        assert caught.value.field == "input.tokens.ids[1]"
        np.testing.assert_array_equal((await session.feed([0])).tensor, expected_logits([0], 3))
    assert session.session_id in fake_server.state.closed
    assert all(m.get("x-client-id") == "bob" for m in fake_server.state.metadata)


async def test_awaited_session_and_out_of_order_step(
    client: AsyncClient, fake_server: FakeServer
) -> None:
    session = await client.session(MODEL)
    await session.feed([0])
    fake_server.state.sessions[session.session_id] = 7
    with pytest.raises(Aborted):
        await session.feed([0])
    assert (await session.feed([1])).step_count == 8
    await session.close()
    with pytest.raises(NotFound):
        await session.describe()


async def test_retries_idempotent_calls_only(client: AsyncClient, fake_server: FakeServer) -> None:
    fake_server.state.unavailable = {"GetModel": 2, "CreateSession": 1}
    assert (await client.model(MODEL)).name == MODEL
    assert fake_server.state.calls.count("GetModel") == 3
    with pytest.raises(Unavailable):
        await client.session(MODEL)


async def test_stream_sync_and_async_iterables(client: AsyncClient) -> None:
    async def inputs() -> AsyncIterator[list[int]]:
        for ids in ([0], [9], [1, 2]):
            await asyncio.sleep(0)
            yield ids

    async with client.session(MODEL) as session:
        results = [r async for r in session.stream(inputs()).results()]
        assert isinstance(results[0], StepOutput) and isinstance(results[1], InvalidArgument)
        assert results[1].field == "step.tokens.ids[0]"
        assert isinstance(results[2], StepOutput)
        np.testing.assert_array_equal(results[2].tensor, expected_logits([1, 2], 1))
        outputs = [o async for o in session.stream(["d", "d"], output="none")]
        assert [o.step_count for o in outputs] == [4, 5] and session.step_count == 5


async def test_generate_snapshot_restore_predict(client: AsyncClient) -> None:
    generation = client.generate(MODEL, "a", max_tokens=3, seed=3)
    assert [piece async for piece in generation] == ["d", "a", "b"]
    assert generation.finish_reason is FinishReason.LENGTH
    async with client.session(MODEL) as session:
        await session.feed([1, 1])
        assert await session.generate(max_tokens=2, temperature=0).read() == "ab"
        assert session.step_count == 4
        snapshot = await session.snapshot()
        async with client.restore(snapshot) as restored:
            assert restored.step_count == 4
        assert (await session.reset()).step_count == 0
    results = await client.predict(BIDIRECTIONAL, ["ab"], steps="last")
    np.testing.assert_array_equal(results[0].tensor, expected_logits([0, 1], 0)[-1:])


async def test_generation_cancel(client: AsyncClient, fake_server: FakeServer) -> None:
    generation = client.generate(MODEL, max_tokens=100_000)
    assert await generation.__anext__() == "a"
    generation.cancel()
    assert [piece async for piece in generation] == []
    assert await asyncio.to_thread(fake_server.state.generate_cancelled.wait, 5)


async def test_stream_deadline_while_waiting_for_input(client: AsyncClient) -> None:
    async def slow_inputs() -> AsyncIterator[list[int]]:
        yield [0]
        await asyncio.sleep(5)
        yield [1]

    async with client.session(MODEL) as session:
        stream = session.stream(slow_inputs(), timeout=0.3)
        assert (await stream.__anext__()).step_count == 1
        with pytest.raises(DeadlineExceeded):
            await stream.__anext__()
        stream.cancel()


async def test_open_stream_feeds_one_message_at_a_time(client: AsyncClient) -> None:
    async with client.session(MODEL) as session:
        async with session.open_stream() as stream:
            assert (await stream.feed("ab")).step_count == 2
            with pytest.raises(InvalidArgument):
                await stream.feed([77])
            out = await stream.feed([3])
            np.testing.assert_array_equal(out.tensor, expected_logits([3], 2))
            assert session.step_count == 3
            assert (await stream.reset()).step_count == 0
        assert (await session.feed([0])).step_count == 1
