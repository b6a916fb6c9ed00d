"""The AsyncClient against a real in-process server over the tiny ONNX models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from client_server import ServerThread
from rnnserve.client import (
    Aborted,
    AsyncClient,
    Client,
    FinishReason,
    InvalidArgument,
    NotFound,
    StepOutput,
)
from tiny_models import GRU_LM, LM_VOCABULARY, LSTM_LM, RNN_LM, TAGGER, run_whole_sequence

TEXT = "a cold dog, an ice bag\n"
IDS = np.array([LM_VOCABULARY.index(c) for c in TEXT], dtype=np.int64)


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.target, client_id="alice", timeout=30) as client:
        yield client


async def test_feed_and_stream_match_the_whole_sequence(
    client: AsyncClient, tiny_repository: Path
) -> None:
    expected = run_whole_sequence(tiny_repository / LSTM_LM, IDS)["logits"]
    async with client.session(LSTM_LM) as fed, client.session(LSTM_LM) as streamed:
        rows = [(await fed.feed(TEXT[:7])).tensor, (await fed.feed(IDS[7:])).tensor]

        async def chunks() -> AsyncIterator[object]:
            for start, stop in ((0, 1), (1, 9), (9, 10), (10, len(TEXT))):
                await asyncio.sleep(0)
                yield TEXT[start:stop]

        outputs = [o async for o in streamed.stream(chunks())]  # type: ignore[arg-type]
        assert streamed.step_count == len(IDS)
    np.testing.assert_allclose(np.concatenate(rows), expected, atol=1e-5)  # type: ignore[arg-type]
    got = np.concatenate([o.tensor for o in outputs])  # type: ignore[misc]
    np.testing.assert_allclose(got, expected, atol=1e-5)


async def test_concurrent_sessions_do_not_affect_each_other(
    client: AsyncClient, tiny_repository: Path
) -> None:
    async def run(model: str, text: str) -> np.ndarray:
        async with client.session(model) as session:
            rows = [(await session.feed(char)).tensor for char in text]
        return np.concatenate(rows)  # type: ignore[arg-type]

    texts = [TEXT, TEXT[::-1], TEXT[3:] + "abc"]
    results = await asyncio.gather(*(run(GRU_LM, text) for text in texts))
    for text, got in zip(texts, results, strict=True):
        ids = np.array([LM_VOCABULARY.index(c) for c in text], dtype=np.int64)
        expected = run_whole_sequence(tiny_repository / GRU_LM, ids)["logits"]
        np.testing.assert_allclose(got, expected, atol=1e-5)


async def test_in_band_errors_keep_the_stream_and_state(client: AsyncClient) -> None:
    async with client.session(RNN_LM) as session, client.session(RNN_LM) as twin:
        results = [r async for r in session.stream([TEXT[:4], [50], TEXT[4:8]]).results()]
        await twin.feed(TEXT[:8])
        assert isinstance(results[1], InvalidArgument)
        assert results[1].field == "step.tokens.ids[0]"
        assert isinstance(results[2], StepOutput) and results[2].step_count == 8
        mine, theirs = await session.feed("a"), await twin.feed("a")
        np.testing.assert_array_equal(mine.tensor, theirs.tensor)


async def test_generate_snapshot_and_errors(client: AsyncClient) -> None:
    texts = []
    for _ in range(2):
        generation = client.generate(LSTM_LM, "a dog ", max_tokens=12, seed=7)
        texts.append("".join([piece async for piece in generation]))
        assert generation.finish_reason is FinishReason.LENGTH
    assert texts[0] == texts[1] and len(texts[0]) >= 12
    async with client.session(LSTM_LM) as session:
        await session.feed(TEXT[:5])
        snapshot = await session.snapshot()
        async with client.restore(snapshot) as restored:
            a = await session.generate(TEXT[5:9], max_tokens=6, seed=3).read()
            b = await restored.generate(TEXT[5:9], max_tokens=6, seed=3).read()
            assert a == b and restored.step_count == session.step_count == 15
    with pytest.raises(NotFound) as caught:
        await session.feed("a")
    assert caught.value.reason == "closed"
    results = await client.predict(TAGGER, [TEXT[:5]], output="top_k", top_k=2)
    assert results[0].top_k_indices is not None and results[0].top_k_indices.shape == (5, 2)


async def test_generation_cancel_stops_the_server_promptly(client: AsyncClient) -> None:
    async with client.session(GRU_LM) as session:
        generation = session.generate("ab", max_tokens=4000, seed=1)
        assert len(await generation.__anext__()) == 1
        generation.cancel()
        assert session.step_count is None  # uncertain until asked
        # The server stops sampling promptly and the session is usable again.
        for _ in range(50):
            try:
                after = await session.feed("a")
                break
            except Aborted:  # the cancelled token may still be finishing
                await asyncio.sleep(0.02)
        assert after.step_count < 100


async def test_identity_is_enforced_across_clients(server: ServerThread) -> None:
    async with AsyncClient(server.target, client_id="alice") as alice:
        session = await alice.session(RNN_LM)
        with Client(server.target, client_id="bob") as bob, pytest.raises(NotFound):
            bob.attach(session.session_id)
        await session.close()
