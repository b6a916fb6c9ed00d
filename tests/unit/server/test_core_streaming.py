"""Streaming through the engine equals one whole-sequence onnxruntime run, alone or batched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, feed, frames, tokens
from prometheus_client import REGISTRY
from rnnserve.server.domain import OutputFormat, OutputOptions, OutputSteps
from rnnserve.server.engine import InferenceEngine

TOL = 1e-5


@pytest.mark.parametrize("model", tm.LANGUAGE_MODELS)
async def test_one_token_per_step_equals_whole_sequence(
    engine: InferenceEngine, tiny_repository: Path, model: str
) -> None:
    sequence = tokens(1, 25)
    whole = tm.run_whole_sequence(tiny_repository / model, sequence)["logits"]
    session = (await engine.create_session(model, 0, ME)).session_id
    rows = [await feed(engine, session, sequence[i : i + 1]) for i in range(len(sequence))]
    np.testing.assert_allclose(np.concatenate(rows), whole, atol=TOL, rtol=0)
    assert (await engine.get_session(session, ME)).step_count == 25


@pytest.mark.parametrize("model", tm.LANGUAGE_MODELS)
async def test_uneven_chunks_equal_whole_sequence(
    engine: InferenceEngine, tiny_repository: Path, model: str
) -> None:
    sequence = tokens(2, 40)
    whole = tm.run_whole_sequence(tiny_repository / model, sequence)["logits"]
    session = (await engine.create_session(model, 0, ME)).session_id
    rows = [await feed(engine, session, c) for c in np.split(sequence, [1, 8, 9, 22, 23, 39])]
    np.testing.assert_allclose(np.concatenate(rows), whole, atol=TOL, rtol=0)


@pytest.mark.parametrize(("model", "width"), [(tm.REGRESSOR, 4), (tm.CLASSIFIER, 3)])
async def test_feature_models_stream_in_chunks(
    engine: InferenceEngine, tiny_repository: Path, model: str, width: int
) -> None:
    sequence = frames(3, 15, width)
    whole = tm.run_whole_sequence(tiny_repository / model, sequence)
    name = next(iter(k for k in whole if not k.endswith("0")))
    session = (await engine.create_session(model, 0, ME)).session_id
    rows = [await feed(engine, session, c) for c in np.split(sequence, [2, 3, 10])]
    np.testing.assert_allclose(np.concatenate(rows), whole[name], atol=TOL, rtol=0)


async def test_many_concurrent_sessions_equal_their_solo_runs(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    """40 sessions step at once with mixed chunk sizes; each equals its solo run."""
    model = tm.LSTM_LM
    sequences = [tokens(100 + i, 12) for i in range(40)]
    sessions = [(await engine.create_session(model, 0, ME)).session_id for _ in sequences]

    async def drive(index: int) -> np.ndarray:
        cuts = [1, 2, 3] if index % 3 == 0 else [4, 8] if index % 3 == 1 else list(range(1, 12))
        chunks = np.split(sequences[index], cuts)
        return np.concatenate([await feed(engine, sessions[index], c) for c in chunks])

    before = _calls(model)
    results = await asyncio.gather(*(drive(i) for i in range(len(sequences))))
    for sequence, result in zip(sequences, results, strict=True):
        solo = tm.run_whole_sequence(tiny_repository / model, sequence)["logits"]
        np.testing.assert_allclose(result, solo, atol=TOL, rtol=0)
    messages = 14 * 4 + 13 * 3 + 13 * 12
    # they really were batched: far fewer onnxruntime calls than messages
    assert _calls(model) - before < messages / 3


def _calls(model: str) -> float:
    return REGISTRY.get_sample_value("rnnserve_compute_seconds_count", {"model": model}) or 0.0


async def test_interleaved_sessions_do_not_affect_each_other(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    model = tm.GRU_LM
    a, b = tokens(5, 10), tokens(6, 10)
    sa = (await engine.create_session(model, 0, ME)).session_id
    sb = (await engine.create_session(model, 0, ME)).session_id
    rows_a, rows_b = [], []
    for i in range(10):
        rows_a.append(await feed(engine, sa, a[i : i + 1]))
        rows_b.append(await feed(engine, sb, b[i : i + 1]))
    np.testing.assert_allclose(
        np.concatenate(rows_a),
        tm.run_whole_sequence(tiny_repository / model, a)["logits"],
        atol=TOL,
    )
    np.testing.assert_allclose(
        np.concatenate(rows_b),
        tm.run_whole_sequence(tiny_repository / model, b)["logits"],
        atol=TOL,
    )


async def test_text_input_is_encoded_with_the_vocabulary(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    text = "hello, abc."
    ids = np.array([tm.LM_VOCABULARY.index(c) for c in text], dtype=np.int64)
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    rows = await feed(engine, session, text)
    whole = tm.run_whole_sequence(tiny_repository / tm.RNN_LM, ids)["logits"]
    np.testing.assert_allclose(rows, whole, atol=TOL)


async def test_version_selection_uses_that_versions_weights(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    sequence = tokens(7, 6)
    session = await engine.create_session(tm.LSTM_LM, 1, ME)
    assert session.version == 1
    rows = await feed(engine, session.session_id, sequence)
    v1 = tm.run_whole_sequence(tiny_repository / tm.LSTM_LM, sequence, version=1)["logits"]
    v2 = tm.run_whole_sequence(tiny_repository / tm.LSTM_LM, sequence, version=2)["logits"]
    np.testing.assert_allclose(rows, v1, atol=TOL)
    assert np.abs(v1 - v2).max() > 0.01
    assert engine.get_model(tm.LSTM_LM).version == 2
    assert engine.get_model(tm.LSTM_LM).versions == [1, 2]


async def test_predict_runs_whole_sequences_for_any_model(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    sequences = [tokens(8, 9), tokens(9, 4), tokens(10, 9)]
    outcomes = await engine.predict(tm.TAGGER, 0, list(sequences), OutputOptions())
    for sequence, outcome in zip(sequences, outcomes, strict=True):
        whole = tm.run_whole_sequence(tiny_repository / tm.TAGGER, sequence)["logits"]
        assert outcome.outputs[0].tensor is not None
        np.testing.assert_allclose(outcome.outputs[0].tensor, whole, atol=TOL)
        assert outcome.outputs[0].labels == [tm.TAGS[i] for i in whole.argmax(-1)]
        assert outcome.steps == len(sequence)


async def test_output_options_last_step_probabilities_and_top_k(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    sequence = frames(11, 7, 3)
    whole = tm.run_whole_sequence(tiny_repository / tm.CLASSIFIER, sequence)["logits"]
    expected = np.exp(whole[-1]) / np.exp(whole[-1]).sum()
    [last] = await engine.predict(
        tm.CLASSIFIER, 0, [sequence], OutputOptions(OutputSteps.LAST, OutputFormat.PROBABILITIES)
    )
    result = last.outputs[0]
    assert result.tensor is not None and result.tensor.shape == (1, 3)
    np.testing.assert_allclose(result.tensor[0], expected, atol=1e-6)
    assert result.labels == [tm.CLASSES[int(expected.argmax())]]
    [top] = await engine.predict(
        tm.CLASSIFIER, 0, [sequence], OutputOptions(OutputSteps.ALL, OutputFormat.TOP_K, top_k=2)
    )
    result = top.outputs[0]
    assert result.top_k_indices is not None and result.top_k_probabilities is not None
    assert result.top_k_indices.shape == (7, 2)
    assert result.top_k_indices[-1].tolist() == list(np.argsort(-expected)[:2])
    np.testing.assert_allclose(
        result.top_k_probabilities[-1], np.sort(expected)[::-1][:2], atol=1e-6
    )
    assert (
        result.top_k_labels is not None
        and result.top_k_labels[-1][0] == tm.CLASSES[int(expected.argmax())]
    )
    [nothing] = await engine.predict(
        tm.CLASSIFIER, 0, [sequence], OutputOptions(format=OutputFormat.NONE)
    )
    assert nothing.steps == 7
    [result] = nothing.outputs
    assert result.tensor is None and result.top_k_indices is None
    assert result.argmax is not None and result.argmax.tolist() == whole.argmax(-1).tolist()
    assert result.labels == [tm.CLASSES[i] for i in whole.argmax(-1)]


async def test_long_messages_run_in_segments_and_equal_whole_sequence(
    engine: InferenceEngine, tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message longer than max_steps_per_call runs in segments, interleaved with others."""
    served = engine.registry.served((tm.LSTM_LM, 2))
    monkeypatch.setattr(served.scheduler, "max_steps_per_call", 4)
    long_a, long_b, short = tokens(60, 23), tokens(61, 9), tokens(62, 6)
    sa, sb, sc = [(await engine.create_session(tm.LSTM_LM, 0, ME)).session_id for _ in range(3)]
    before = _calls(tm.LSTM_LM)

    async def stepper() -> np.ndarray:
        return np.concatenate([await feed(engine, sc, short[i : i + 1]) for i in range(6)])

    ra, rb, rc = await asyncio.gather(feed(engine, sa, long_a), feed(engine, sb, long_b), stepper())
    for rows, sequence in ((ra, long_a), (rb, long_b), (rc, short)):
        whole = tm.run_whole_sequence(tiny_repository / tm.LSTM_LM, sequence)["logits"]
        np.testing.assert_allclose(rows, whole, atol=TOL, rtol=0)
    assert _calls(tm.LSTM_LM) - before >= 6  # 23 steps in segments of 4: at least 6 calls
    outcome = await engine.predict(tm.LSTM_LM, 0, [long_a, short], OutputOptions())
    assert outcome[0].outputs[0].tensor is not None
    np.testing.assert_allclose(outcome[0].outputs[0].tensor, ra, atol=TOL)
