"""The synchronous client against a real in-process server over the tiny ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from client_server import ServerThread
from rnnserve.client import (
    Client,
    FailedPrecondition,
    FinishReason,
    InvalidArgument,
    NotFound,
    StepOutput,
)
from tiny_models import (
    CLASSIFIER,
    GRU_LM,
    LANGUAGE_MODELS,
    LM_VOCABULARY,
    LSTM_LM,
    REGRESSOR,
    RNN_LM,
    TAGGER,
    run_whole_sequence,
)

TEXT = "hello, a bad fog. an ice cap\n"
IDS = np.array([LM_VOCABULARY.index(c) for c in TEXT], dtype=np.int64)


@pytest.fixture
def client(server: ServerThread) -> Client:
    with Client(server.target, client_id="alice", timeout=30) as client:
        yield client  # type: ignore[misc]


def test_models_describe_the_tiny_repository(client: Client) -> None:
    names = {model.name for model in client.models()}
    assert {RNN_LM, GRU_LM, LSTM_LM, REGRESSOR, CLASSIFIER, TAGGER} <= names
    lstm = client.model(LSTM_LM)
    assert lstm.version == 2 and lstm.versions == (1, 2) and lstm.cell == "lstm"
    assert lstm.vocabulary is not None and lstm.vocabulary.tokens == tuple(LM_VOCABULARY)
    assert client.model(LSTM_LM, 1).version == 1
    tagger = client.model(TAGGER)
    assert tagger.bidirectional and not tagger.streamable
    assert client.model(REGRESSOR).feature_width == 4


@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_feeding_in_chunks_matches_one_whole_sequence_run(
    client: Client, tiny_repository: Path, model: str
) -> None:
    expected = run_whole_sequence(tiny_repository / model, IDS)["logits"]
    with client.session(model) as one_by_one, client.session(model) as chunked:
        rows = [one_by_one.feed([int(token)]).tensor for token in IDS]
        # Uneven chunks, as text and as ids, interleaved with the other session.
        pieces = [chunked.feed(TEXT[:3]), chunked.feed(IDS[3:4]), chunked.feed(TEXT[4:17])]
        pieces.append(chunked.feed(list(IDS[17:])))
    np.testing.assert_allclose(np.concatenate(rows), expected, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p.tensor for p in pieces]), expected, atol=1e-5)
    assert pieces[-1].step_count == len(IDS)
    np.testing.assert_array_equal(pieces[-1].argmax, expected[17:].argmax(axis=1))
    assert pieces[-1].labels == tuple(LM_VOCABULARY[i] for i in expected[17:].argmax(axis=1))


def test_stream_matches_the_whole_sequence_and_survives_a_bad_message(
    client: Client, tiny_repository: Path
) -> None:
    expected = run_whole_sequence(tiny_repository / GRU_LM, IDS)["logits"]
    inputs: list[object] = [TEXT[:5], [99], TEXT[5:6], IDS[6:20], b"not input", TEXT[20:]]
    with client.session(GRU_LM) as session:
        results = list(session.stream(inputs, output="probabilities").results())  # type: ignore[arg-type]
        assert session.step_count == len(IDS)
    errors = [r for r in results if not isinstance(r, StepOutput)]
    outputs = [r for r in results if isinstance(r, StepOutput)]
    assert [type(e).__name__ for e in errors] == ["InvalidArgument", "InvalidArgument"]
    assert errors[0].field == "step.tokens.ids[0]"
    probabilities = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    got = np.concatenate([o.tensor for o in outputs])  # type: ignore[misc]
    np.testing.assert_allclose(got, probabilities, atol=1e-5)
    assert [o.step_count for o in outputs] == [5, 6, 20, len(IDS)]


def test_output_options_top_k_last_and_none(client: Client, tiny_repository: Path) -> None:
    expected = run_whole_sequence(tiny_repository / RNN_LM, IDS[:6])["logits"]
    with client.session(RNN_LM) as session:
        top = session.feed(IDS[:6], output="top_k", top_k=3, steps="last")
        assert top.tensor is None and top.top_k_indices is not None
        np.testing.assert_array_equal(top.top_k_indices[0], np.argsort(-expected[-1])[:3])
        assert top.output.top_k_labels[0][0] == LM_VOCABULARY[int(expected[-1].argmax())]
        assert session.reset().step_count == 0
        none = session.feed(IDS[:6], output="none")
        assert none.tensor is None and none.step_count == 6


def test_output_format_none_keeps_the_argmax(client: Client, tiny_repository: Path) -> None:
    expected = run_whole_sequence(tiny_repository / RNN_LM, IDS[:6])["logits"]
    with client.session(RNN_LM) as session:
        none = session.feed(IDS[:6], output="none")
    assert none.tensor is None and none.argmax is not None
    np.testing.assert_array_equal(none.argmax, expected.argmax(axis=1))


def test_feature_models_take_numpy_frames(client: Client, tiny_repository: Path) -> None:
    frames = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    expected = run_whole_sequence(tiny_repository / REGRESSOR, frames)["value"]
    with client.session(REGRESSOR) as session:
        first = session.feed(frames[:3])
        rest = session.feed(frames[3:].astype(np.float64))  # converted to float32
    assert first["value"].argmax is None  # values have no argmax
    np.testing.assert_allclose(np.concatenate([first.tensor, rest.tensor]), expected, atol=1e-5)
    with client.session(CLASSIFIER) as session, pytest.raises(InvalidArgument) as caught:
        session.feed(frames)  # width 4 for a width-3 model
    assert caught.value.field is not None and caught.value.field.startswith("input.features")


def test_errors_raise_their_exception_and_leave_the_state_unchanged(
    client: Client, tiny_repository: Path
) -> None:
    expected = run_whole_sequence(tiny_repository / LSTM_LM, IDS[:4])["logits"]
    with client.session(LSTM_LM) as session:
        session.feed(IDS[:2])
        with pytest.raises(InvalidArgument) as caught:
            session.feed([1, 2, 99])
        assert caught.value.field == "input.tokens.ids[2]"
        with pytest.raises(InvalidArgument):
            session.feed([])
        np.testing.assert_allclose(session.feed(IDS[2:4]).tensor, expected[2:4], atol=1e-5)
        with Client(client.target, client_id="mallory") as other, pytest.raises(NotFound) as no:
            other.attach(session.session_id)
        assert no.value.reason is None  # not told that the session exists
    with pytest.raises(NotFound) as gone:
        session.feed([1])
    assert gone.value.reason == "closed"
    with pytest.raises(NotFound):
        client.session("no-such-model")
    with pytest.raises(NotFound):
        client.session(LSTM_LM, version=7)
    with pytest.raises(FailedPrecondition):
        client.session(TAGGER)


def test_generation_is_reproducible_with_a_seed_and_stops(client: Client) -> None:
    first = client.generate(LSTM_LM, "a bad ", max_tokens=20, seed=42)
    text = "".join(first)
    assert len(first.tokens) == 20 and first.finish_reason is FinishReason.LENGTH
    assert "".join(client.generate(LSTM_LM, "a bad ", max_tokens=20, seed=42)) == text
    stop = text[5]
    stopped = client.generate(LSTM_LM, "a bad ", max_tokens=20, seed=42, stop=[stop])
    assert stopped.read() == text[: text.index(stop) + 1]
    assert stopped.finish_reason is FinishReason.STOP


def test_greedy_generation_continues_the_session_state(
    client: Client, tiny_repository: Path
) -> None:
    with client.session(RNN_LM) as session:
        session.feed(TEXT[:4])
        generation = session.generate(TEXT[4:8], max_tokens=5, temperature=0)
        text = generation.read()
        assert session.step_count == 8 + 5 == generation.tokens[-1].step_count
        # Greedy: each token is the argmax after everything before it, fed by the session.
        fed = np.concatenate([IDS[:8], generation.token_ids[:-1]])
        logits = run_whole_sequence(tiny_repository / RNN_LM, fed)["logits"]
        assert generation.token_ids == logits[7:].argmax(axis=1).tolist()
        assert text == "".join(LM_VOCABULARY[i] for i in generation.token_ids)
        after = session.feed(TEXT[8:9])
        assert after.step_count == 14


def test_snapshot_restores_identically(client: Client, tiny_repository: Path) -> None:
    with client.session(LSTM_LM, version=1) as session:
        session.feed(TEXT[:10])
        snapshot = session.snapshot()
        with client.restore(snapshot) as restored:
            assert restored.model.version == 1 and restored.step_count == 10
            mine = session.feed(TEXT[10:])
            theirs = restored.feed(TEXT[10:])
    np.testing.assert_array_equal(mine.tensor, theirs.tensor)
    expected = run_whole_sequence(tiny_repository / LSTM_LM, IDS, version=1)["logits"]
    np.testing.assert_allclose(theirs.tensor, expected[10:], atol=1e-5)
    corrupted = bytearray(snapshot)
    corrupted[len(corrupted) // 2] ^= 0xFF
    with pytest.raises(InvalidArgument):
        client.restore(bytes(corrupted))


def test_predict_runs_whole_sequences_on_a_bidirectional_model(
    client: Client, tiny_repository: Path
) -> None:
    sequences = [TEXT[:9], IDS[3:20]]
    results = client.predict(TAGGER, sequences)
    for sequence, result in zip([IDS[:9], IDS[3:20]], results, strict=True):
        expected = run_whole_sequence(tiny_repository / TAGGER, sequence)["logits"]
        np.testing.assert_allclose(result.tensor, expected, atol=1e-5)
        assert result.step_count == len(sequence)
    with pytest.raises(InvalidArgument) as caught:
        client.predict(TAGGER, [TEXT[:3], [0, 20]])
    assert caught.value.field == "sequences[1].tokens.ids[1]"


def test_generation_without_a_prompt_continues_from_the_state(client: Client) -> None:
    with client.session(RNN_LM) as session:
        session.feed(TEXT[:8])
        generation = session.generate(max_tokens=4, seed=1)
        assert len(generation.read()) >= 4 and session.step_count == 12


def test_open_stream_greedy_loop_matches_greedy_generation(client: Client) -> None:
    with client.session(LSTM_LM) as fed, fed.open_stream() as stream:
        out = stream.feed(TEXT[:6])
        tokens = [int(out.argmax[-1])]  # type: ignore[index]
        for _ in range(4):
            out = stream.feed([tokens[-1]])
            tokens.append(int(out.argmax[-1]))  # type: ignore[index]
        assert fed.step_count == 10
    with client.session(LSTM_LM) as generated:
        generation = generated.generate(TEXT[:6], max_tokens=5, temperature=0)
        assert generation.read() and generation.token_ids == tokens
