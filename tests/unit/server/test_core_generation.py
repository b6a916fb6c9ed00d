"""Generation: seeded reproducibility, stop strings, cancellation, state = prompt + tokens."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, Gate, feed
from rnnserve.server.domain import (
    FinishReason,
    GeneratedToken,
    GenerationRequest,
    OutputOptions,
    SamplingParams,
)
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidInput, NotALanguageModel, SessionBusy, SessionNotFound
from rnnserve.server.generation import Sampler, StopMatcher

PROMPT = "hello. "


async def _generate(engine: InferenceEngine, **kwargs: Any) -> list[GeneratedToken]:
    request = GenerationRequest(**{"model": tm.LSTM_LM, "prompt": PROMPT, **kwargs})
    return [token async for token in engine.generate(request, ME)]


async def test_same_seed_same_text(engine: InferenceEngine) -> None:
    params = SamplingParams(temperature=0.9, top_k=10, top_p=0.95, seed=1234)
    first = await _generate(engine, sampling=params, max_tokens=30)
    second = await _generate(engine, sampling=params, max_tokens=30)
    other = await _generate(engine, sampling=SamplingParams(seed=99), max_tokens=30)
    assert [t.token_id for t in first] == [t.token_id for t in second]
    assert [t.token_id for t in first] != [t.token_id for t in other]
    assert len(first) == 30 and first[-1].finish_reason is FinishReason.LENGTH
    assert all(t.finish_reason is None for t in first[:-1])
    assert [t.index for t in first] == list(range(30))


async def test_state_advances_by_prompt_and_generated_tokens(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    tokens = await _generate(engine, sampling=SamplingParams(seed=5), max_tokens=12)
    session = tokens[0].session_id
    assert tokens[-1].step_count == len(PROMPT) + 12
    # the session stays open and continues after the generated text
    rows = await feed(engine, session, "ab")
    text = PROMPT + "".join(t.text for t in tokens) + "ab"
    ids = np.array([tm.LM_VOCABULARY.index(c) for c in text], dtype=np.int64)
    whole = tm.run_whole_sequence(tiny_repository / tm.LSTM_LM, ids)["logits"]
    np.testing.assert_allclose(rows, whole[-2:], atol=1e-5)


async def test_greedy_follows_the_argmax(engine: InferenceEngine, tiny_repository: Path) -> None:
    tokens = await _generate(engine, sampling=SamplingParams(temperature=0), max_tokens=8)
    ids = [tm.LM_VOCABULARY.index(c) for c in PROMPT]
    for token in tokens:
        whole = tm.run_whole_sequence(tiny_repository / tm.LSTM_LM, np.array(ids, np.int64))
        assert token.token_id == int(whole["logits"][-1].argmax())
        ids.append(token.token_id)


async def test_stop_string_ends_generation(engine: InferenceEngine) -> None:
    params = SamplingParams(seed=7)
    free = await _generate(engine, sampling=params, max_tokens=40)
    text = "".join(t.text for t in free)
    stop = text[10:12]
    first = text.index(stop)
    stopped = await _generate(engine, sampling=params, max_tokens=40, stop=("zzz", stop))
    assert "".join(t.text for t in stopped) == text[: first + len(stop)]
    assert stopped[-1].finish_reason is FinishReason.STOP


async def test_generation_on_an_existing_session_and_close(engine: InferenceEngine) -> None:
    session = (await engine.create_session(tm.GRU_LM, 0, ME)).session_id
    await feed(engine, session, "abc")
    request = GenerationRequest(session_id=session, prompt="d", max_tokens=3)
    tokens = [t async for t in engine.generate(request, ME)]
    assert tokens[-1].step_count == 3 + 1 + 3 and tokens[0].session_id == session
    closing = GenerationRequest(model=tm.GRU_LM, prompt="a", max_tokens=2, close_session=True)
    made = [t async for t in engine.generate(closing, ME)]
    assert len(engine.sessions) == 1 and made[0].session_id != session


async def test_cancelling_the_consumer_stops_and_keeps_what_was_yielded(
    engine: InferenceEngine,
) -> None:
    request = GenerationRequest(model=tm.LSTM_LM, prompt=PROMPT, max_tokens=4000)
    received: list[GeneratedToken] = []

    async def consume() -> None:
        # as the transport does: aclosing closes the generator when this task is cancelled
        async with contextlib.aclosing(engine.generate(request, ME)) as stream:  # type: ignore[type-var]
            async for token in stream:
                received.append(token)
                if len(received) == 5:
                    await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    while len(received) < 5:
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    session = received[0].session_id
    view = await engine.get_session(session, ME)
    assert view.step_count == len(PROMPT) + 5  # prompt + every token the consumer saw
    await feed(engine, session, "a")  # not busy any more


async def test_a_step_during_generation_is_refused(engine: InferenceEngine) -> None:
    session = (await engine.create_session(tm.LSTM_LM, 0, ME)).session_id
    stream = engine.generate(GenerationRequest(session_id=session, prompt="a", max_tokens=50), ME)
    first = await anext(stream)
    with pytest.raises(SessionBusy):
        await engine.step(session, ME, "b", OutputOptions())
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await engine.get_session(session, ME)).step_count == first.step_count


async def test_generation_errors(engine: InferenceEngine) -> None:
    with pytest.raises(NotALanguageModel):
        await _generate(engine, model=tm.CLASSIFIER)
    with pytest.raises(NotALanguageModel):
        await _generate(engine, model=tm.TAGGER)
    with pytest.raises(InvalidInput) as caught:
        await _generate(engine, prompt="")
    assert caught.value.field == "prompt"
    with pytest.raises(InvalidInput) as caught:
        await _generate(engine, prompt="abXc")
    assert caught.value.field == "text[2]"
    with pytest.raises(InvalidInput) as caught:
        await _generate(engine, max_tokens=10**6)
    assert caught.value.field == "max_tokens"
    for params, field in [
        (SamplingParams(temperature=-1), "sampling.temperature"),
        (SamplingParams(top_p=0), "sampling.top_p"),
        (SamplingParams(top_k=-2), "sampling.top_k"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            await _generate(engine, sampling=params)
        assert caught.value.field == field
    assert len(engine.sessions) == 0  # refused requests left no session behind


def test_sampler_limits() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert {Sampler(SamplingParams(top_k=1, seed=i)).sample(logits) for i in range(20)} == {1}
    assert {Sampler(SamplingParams(top_p=0.01, seed=i)).sample(logits) for i in range(20)} == {1}
    two = {Sampler(SamplingParams(top_k=2, seed=i)).sample(logits) for i in range(50)}
    assert two == {1, 2}
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == 1


def test_stop_matcher_spans_tokens() -> None:
    matcher = StopMatcher(("\n\n", "end"))
    assert [matcher.feed(p) for p in ["a", "e", "n", "d"]] == [False, False, False, True]
    matcher = StopMatcher(("\n\n",))
    assert [matcher.feed(p) for p in ["x", "\n", "\n"]] == [False, False, True]


async def test_cancel_while_a_token_is_being_computed(engine: InferenceEngine) -> None:
    request = GenerationRequest(model=tm.RNN_LM, prompt="abc", max_tokens=100)
    received: list[GeneratedToken] = []
    gate: Gate | None = None

    async def consume() -> None:
        nonlocal gate
        async with contextlib.aclosing(engine.generate(request, ME)) as stream:  # type: ignore[type-var]
            async for token in stream:
                received.append(token)
                if len(received) == 3:
                    gate = Gate(engine, tm.RNN_LM)  # the next token's call blocks

    task = asyncio.create_task(consume())
    while gate is None:
        await asyncio.sleep(0.001)
    await gate.wait_entered()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gate.open()
    await asyncio.sleep(0.02)
    view = await engine.get_session(received[0].session_id, ME)
    assert view.step_count == 3 + 3


async def test_closing_the_session_ends_its_generation(engine: InferenceEngine) -> None:
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    stream = engine.generate(GenerationRequest(session_id=session, prompt="a", max_tokens=50), ME)
    await anext(stream)
    await engine.close_session(session, ME)
    with pytest.raises(SessionNotFound) as caught:
        await anext(stream)
    assert caught.value.reason == "closed"
    assert (
        engine.registry.served((tm.RNN_LM, 1)).store.used == 0
    )  # the slot was freed when it ended


async def test_generation_without_a_prompt_continues_from_the_last_step(
    make_engine: Any, tiny_repository: Path
) -> None:
    engine = await make_engine()
    session = (await engine.create_session(tm.LSTM_LM, 0, ME)).session_id
    with pytest.raises(InvalidInput, match="no output yet") as caught:
        await anext(engine.generate(GenerationRequest(session_id=session, max_tokens=3), ME))
    assert caught.value.field == "prompt"
    await feed(engine, session, PROMPT)
    greedy = SamplingParams(temperature=0)
    request = GenerationRequest(session_id=session, max_tokens=4, sampling=greedy)
    tokens = [t async for t in engine.generate(request, ME)]
    assert tokens[-1].step_count == len(PROMPT) + 4
    # the same as generating with the prompt on a fresh session
    fresh = await _generate(engine, sampling=greedy, max_tokens=4)
    assert [t.token_id for t in tokens] == [t.token_id for t in fresh]
    # the last output travels in snapshots: a second engine continues without a prompt
    data, _ = await engine.export_state(session, ME)
    other = await make_engine()
    imported = (await other.import_state(data, ME)).session_id
    more = [
        t
        async for t in other.generate(
            GenerationRequest(session_id=imported, max_tokens=3, sampling=greedy), ME
        )
    ]
    again = [
        t
        async for t in engine.generate(
            GenerationRequest(session_id=session, max_tokens=3, sampling=greedy), ME
        )
    ]
    assert [t.token_id for t in more] == [t.token_id for t in again]
    await engine.reset_session(session, ME)
    with pytest.raises(InvalidInput, match="no output yet"):
        await anext(engine.generate(GenerationRequest(session_id=session, max_tokens=3), ME))


def _reference_draw(rng: np.random.Generator, params: SamplingParams, logits: np.ndarray) -> int:
    """The sampling rule written plainly, one new array a step (what Sampler must equal)."""
    scores = np.asarray(logits, dtype=np.float64) / params.temperature
    if 0 < params.top_k < scores.shape[0]:
        threshold = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores >= threshold, scores, -np.inf)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    if params.top_p < 1:
        order = np.argsort(-probabilities, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probabilities[order]), params.top_p)) + 1]
        mask = np.zeros_like(probabilities)
        mask[keep] = probabilities[keep]
        probabilities = mask / mask.sum()
    cumulative = np.cumsum(probabilities)
    draw = rng.random() * cumulative[-1]
    return int(min(np.searchsorted(cumulative, draw, side="right"), len(cumulative) - 1))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 40, 1.0), (0.9, 0, 0.9), (0.5, 5, 0.5)],
)
def test_sampler_draws_exactly_what_the_plain_rule_draws(
    temperature: float, top_k: int, top_p: float
) -> None:
    # the sampler works in place for speed; every draw must stay the same as the plain rule's
    source = np.random.default_rng(3)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    sampler, reference = Sampler(params), np.random.default_rng(11)
    for step in range(400):
        logits = (source.standard_normal(81) * (1 + step % 7 * 4)).astype(np.float32)
        if step % 13 == 0:
            logits[:] = 0.0  # all tied
        assert sampler.sample(logits) == _reference_draw(reference, params, logits)
