"""Every invalid input is refused with its field named, and the session's state is unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, feed, frames, tokens, twin_session
from rnnserve.server.domain import OutputFormat, OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidInput, ModelNotFound, ModelNotStreamable

PREFIX = tokens(20, 5)
NEXT = tokens(21, 1)

TOKEN_CASES: list[tuple[Any, str, str]] = [
    (np.array([1, 2, 20], dtype=np.int64), "tokens.ids[2]", "outside the vocabulary"),
    (np.array([-1], dtype=np.int64), "tokens.ids[0]", "outside the vocabulary"),
    (np.array([], dtype=np.int64), "tokens.ids", "at least one step"),
    (np.zeros((2, 2), dtype=np.int64), "tokens.shape", "one-dimensional"),
    (np.array([1.0, 2.0], dtype=np.float32), "tokens.dtype", "token ids"),
    (np.zeros((2, 3), dtype=np.float32), "features", "token ids"),
    ("abcX", "text[3]", "not in the vocabulary"),
    ("", "text", "empty"),
    (np.zeros(9, dtype=np.int64), "tokens.ids", "max_steps_per_message 8"),
    ("abcdefghij", "text", "max_steps_per_message 8"),
]


@pytest.mark.parametrize(("data", "field", "message"), TOKEN_CASES)
async def test_bad_token_input_names_the_field_and_keeps_state(
    make_engine: Any, data: Any, field: str, message: str
) -> None:
    engine = await make_engine(max_steps_per_message=8)
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    twin = await twin_session(engine, tm.RNN_LM, PREFIX)
    with pytest.raises(InvalidInput) as caught:
        await engine.step(session, ME, data, OutputOptions())
    assert caught.value.field == field
    assert message in caught.value.message
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))


FEATURE_CASES: list[tuple[Any, str, str]] = [
    (np.zeros((2, 5), dtype=np.float32), "features.shape", "expected [*, 4], got [2, 5]"),
    (np.zeros(4, dtype=np.float32), "features.shape", "expected [*, 4], got [4]"),
    (np.zeros((2, 4), dtype=np.float64), "features.dtype", "float32"),
    (np.zeros((0, 4), dtype=np.float32), "features", "at least one step"),
    (np.array([[0, 0, np.nan, 0]], dtype=np.float32), "features", "features[0, 2] is nan"),
    (np.array([[0, 0, 0, 0], [np.inf, 0, 0, 0]], dtype=np.float32), "features", "is inf"),
    (np.array([1, 2], dtype=np.int64), "tokens", "takes feature frames of width 4"),
    ("abc", "text", "takes feature frames"),
]


@pytest.mark.parametrize(("data", "field", "message"), FEATURE_CASES)
async def test_bad_feature_input_names_the_field_and_keeps_state(
    engine: InferenceEngine, data: Any, field: str, message: str
) -> None:
    prefix = frames(22, 3, 4)
    session = await twin_session(engine, tm.REGRESSOR, prefix)
    twin = await twin_session(engine, tm.REGRESSOR, prefix)
    with pytest.raises(InvalidInput) as caught:
        await engine.step(session, ME, data, OutputOptions())
    assert caught.value.field == field
    assert message in caught.value.message
    nxt = frames(23, 1, 4)
    np.testing.assert_array_equal(await feed(engine, session, nxt), await feed(engine, twin, nxt))


async def test_unknown_symbols_use_unknown_token_when_the_model_has_one(
    engine: InferenceEngine,
) -> None:
    session = (await engine.create_session(tm.GRU_LM, 0, ME)).session_id
    twin = (await engine.create_session(tm.GRU_LM, 0, ME)).session_id
    np.testing.assert_array_equal(
        await feed(engine, session, "aXb"), await feed(engine, twin, "a b")
    )


async def test_bad_top_k_is_refused_before_running(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    with pytest.raises(InvalidInput) as caught:
        await engine.step(session, ME, NEXT, OutputOptions(format=OutputFormat.TOP_K, top_k=0))
    assert caught.value.field == "output.top_k"  # the proto's name, as the core now uses
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)


async def test_predict_names_the_sequence_at_fault(engine: InferenceEngine) -> None:
    with pytest.raises(InvalidInput) as caught:
        await engine.predict(
            tm.TAGGER, 0, [tokens(1, 3), np.array([3, 99], dtype=np.int64)], OutputOptions()
        )
    assert caught.value.field == "sequences[1].tokens.ids[1]"
    with pytest.raises(InvalidInput) as caught:
        await engine.predict(tm.TAGGER, 0, [], OutputOptions())
    assert caught.value.field == "sequences"


async def test_unknown_model_or_version(engine: InferenceEngine) -> None:
    with pytest.raises(ModelNotFound, match="not served"):
        await engine.create_session("nope", 0, ME)
    with pytest.raises(ModelNotFound, match="no version 7"):
        await engine.create_session(tm.LSTM_LM, 7, ME)
    with pytest.raises(ModelNotFound):
        engine.get_model("nope")


async def test_bidirectional_model_cannot_be_streamed(engine: InferenceEngine) -> None:
    with pytest.raises(ModelNotStreamable, match="Predict"):
        await engine.create_session(tm.TAGGER, 0, ME)


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (3,)])
def test_the_runtime_refuses_an_empty_call_rather_than_reach_onnxruntime(
    tmp_path: Any, shape: tuple[int, ...]
) -> None:
    # onnxruntime's recurrent kernels call std::terminate on an empty sequence (found by fuzzing
    # with a word model's text of spaces): the last guard turns that into an exception
    from rnnserve.server.manifest import ONNX_FILENAME
    from rnnserve.server.runtime import OnnxModel

    manifest = tm.build_repository(tmp_path)[tm.GRU_LM]
    model = OnnxModel(manifest, 1, tmp_path / tm.GRU_LM / "1" / ONNX_FILENAME)
    state = np.zeros((1, max(shape[0], 1), 10), np.float32)
    with pytest.raises(ValueError, match="no steps to run"):
        model.run(np.zeros(shape, np.int64), [state])
    outputs, _ = model.run(np.zeros((1, 2), np.int64), [np.zeros((1, 1, 10), np.float32)])
    assert outputs[0].shape[:2] == (1, 2)
