"""Proto <-> domain codecs: proto-level checks name the field; values survive the round trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from rnnserve.server.domain import (
    FinishReason,
    GeneratedToken,
    OutputFormat,
    OutputResult,
    OutputSteps,
    SessionView,
    StepOutcome,
)
from rnnserve.server.errors import InvalidInput
from rnnserve.server.manifest import ModelManifest
from rnnserve.server.transport import codecs
from rnnserve.v1 import rnnserve_pb2 as pb


def _features(array: np.ndarray, dtype: int = pb.DATA_TYPE_FLOAT32) -> pb.StepInput:
    tensor = pb.Tensor(dtype=dtype, shape=list(array.shape), raw_data=array.tobytes())
    return pb.StepInput(features=tensor)


def test_token_ids_decode_to_int64() -> None:
    data = codecs.decode_input(pb.StepInput(tokens=pb.TokenIds(ids=[3, 0, 19])), "step")
    assert isinstance(data, np.ndarray)
    assert data.dtype == np.int64
    assert data.tolist() == [3, 0, 19]


def test_text_passes_through() -> None:
    assert codecs.decode_input(pb.StepInput(text="abc"), "step") == "abc"


def test_features_decode_exactly_and_writable() -> None:
    frames = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    data = codecs.decode_input(_features(frames), "step")
    assert isinstance(data, np.ndarray)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, frames)
    assert data.flags.writeable


def test_unset_oneof_names_the_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_input(pb.StepInput(), "step")
    assert caught.value.field == "step"
    assert "tokens, features or text" in caught.value.message


def test_wrong_dtype_names_dtype_field() -> None:
    frames = np.zeros((2, 4), dtype=np.float64)
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_input(_features(frames, pb.DATA_TYPE_FLOAT64), "step")
    assert caught.value.field == "step.features.dtype"
    assert "DATA_TYPE_FLOAT64" in caught.value.message


@pytest.mark.parametrize("shape", [[8], [2, 2, 2], [-1, 8]])
def test_wrong_rank_names_shape_field(shape: list[int]) -> None:
    tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, raw_data=b"\0" * 32)
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_input(pb.StepInput(features=tensor), "sequences[2]")
    assert caught.value.field == "sequences[2].features.shape"
    assert "expected [steps, width]" in caught.value.message


def test_raw_length_mismatch_names_raw_data() -> None:
    tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[3, 4], raw_data=b"\0" * 44)
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_input(pb.StepInput(features=tensor), "input")
    assert caught.value.field == "input.features.raw_data"
    assert "expected 48 bytes" in caught.value.message and "got 44" in caught.value.message


def test_model_ref_requires_a_name_and_non_negative_version() -> None:
    assert codecs.decode_model_ref(pb.ModelRef(name="m", version=2)) == ("m", 2)
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_model_ref(pb.ModelRef(), "open.model")
    assert caught.value.field == "open.model.name"
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_model_ref(pb.ModelRef(name="m", version=-1))
    assert caught.value.field == "model.version"


def test_empty_session_id_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_session_id("")
    assert caught.value.field == "session_id"


def test_output_options_defaults_and_values() -> None:
    default = codecs.decode_output_options(pb.OutputOptions())
    assert (default.steps, default.format, default.top_k) == (OutputSteps.ALL, OutputFormat.RAW, 5)
    chosen = codecs.decode_output_options(
        pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_TOP_K, top_k=2)
    )
    assert (chosen.steps, chosen.format, chosen.top_k) == (
        OutputSteps.LAST,
        OutputFormat.TOP_K,
        2,
    )


def test_output_options_decoded_once_per_combination_stay_exact_and_bounded() -> None:
    # the decoded options are kept per (steps, format, top_k): each combination still decodes
    # to its own values, an invalid one is refused every time, and the kept set stays bounded
    for top_k in range(3000):
        message = pb.OutputOptions(format=pb.OUTPUT_FORMAT_TOP_K, top_k=top_k)
        for _ in range(2):
            options = codecs.decode_output_options(message)
            assert (options.format, options.top_k) == (OutputFormat.TOP_K, top_k or 5)
    assert len(codecs._DECODED_OPTIONS) <= 1024
    for _ in range(2):
        with pytest.raises(InvalidInput) as caught:
            codecs.decode_output_options(pb.OutputOptions(steps=7), field="step.output")
        assert caught.value.field == "step.output.steps"


def test_unknown_enum_value_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_output_options(pb.OutputOptions(format=99))  # type: ignore[arg-type]
    assert caught.value.field == "output.format"


def test_generation_defaults() -> None:
    request = pb.GenerateRequest(model=pb.ModelRef(name="lm"), text="ab", max_tokens=5)
    generation = codecs.decode_generation(request)
    assert (generation.model, generation.version, generation.session_id) == ("lm", 0, None)
    assert generation.prompt == "ab"
    assert generation.sampling.temperature == 1.0
    assert generation.sampling.top_p == 1.0
    assert generation.sampling.seed is None
    assert generation.max_tokens == 5


def test_generation_sampling_values() -> None:
    request = pb.GenerateRequest(
        session_id="s1",
        tokens=pb.TokenIds(ids=[1, 2]),
        sampling=pb.SamplingParams(temperature=0.0, top_k=3, top_p=0.9, seed=42),
        max_tokens=7,
        stop=["\n"],
    )
    generation = codecs.decode_generation(request)
    assert generation.session_id == "s1" and generation.model is None
    assert isinstance(generation.prompt, np.ndarray) and generation.prompt.tolist() == [1, 2]
    assert generation.sampling.temperature == 0.0
    assert generation.sampling.top_k == 3
    assert generation.sampling.top_p == pytest.approx(0.9)
    assert generation.sampling.seed == 42
    assert generation.stop == ("\n",)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(max_tokens=3), "target"),
        (pb.GenerateRequest(model=pb.ModelRef(name="lm")), "max_tokens"),
        (
            pb.GenerateRequest(
                model=pb.ModelRef(name="lm"),
                max_tokens=3,
                sampling=pb.SamplingParams(temperature=-1.0),
            ),
            "sampling.temperature",
        ),
        (
            pb.GenerateRequest(
                model=pb.ModelRef(name="lm"), max_tokens=3, sampling=pb.SamplingParams(top_p=1.5)
            ),
            "sampling.top_p",
        ),
        (pb.GenerateRequest(session_id="s", max_tokens=3, close_session=True), "close_session"),
    ],
)
def test_generation_refusals_name_the_field(request_: pb.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_generation(request_)
    assert caught.value.field == field


def test_tensor_round_trip_is_little_endian_row_major() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    tensor = codecs.encode_tensor(array)
    assert tensor.dtype == pb.DATA_TYPE_FLOAT32
    assert list(tensor.shape) == [3, 2]
    assert tensor.raw_data == np.ascontiguousarray(array).astype("<f4").tobytes()
    np.testing.assert_array_equal(codecs.decode_tensor(tensor), array)


def test_step_outcome_encodes_every_output_form() -> None:
    logits = OutputResult(
        name="logits",
        meaning="logits",
        tensor=np.array([[0.1, 0.9]], dtype=np.float32),
        top_k_indices=np.array([[1, 0]], dtype=np.int64),
        top_k_probabilities=np.array([[0.7, 0.3]], dtype=np.float32),
        top_k_labels=[["yes", "no"]],
        argmax=np.array([1], dtype=np.int64),
        labels=["yes"],
    )
    value = OutputResult(name="value", meaning="value", tensor=np.ones((1, 2), np.float32))
    result = codecs.encode_step(StepOutcome(outputs=[logits, value], steps=1, step_count=9))
    assert (result.steps, result.step_count) == (1, 9)
    first, second = result.outputs
    np.testing.assert_allclose(codecs.decode_tensor(first.tensor), [[0.1, 0.9]])
    assert list(first.top_k[0].indices) == [1, 0]
    assert list(first.top_k[0].probabilities) == pytest.approx([0.7, 0.3])
    assert list(first.top_k[0].labels) == ["yes", "no"]
    assert list(first.argmax) == [1] and list(first.labels) == ["yes"]
    assert second.meaning == "value" and not second.argmax


def test_session_and_token_encoding() -> None:
    view = SessionView("s1", "lm", 2, 5, 100.0, 700.0, 64)
    info = codecs.encode_session(view)
    assert (info.session_id, info.model, info.version, info.step_count) == ("s1", "lm", 2, 5)
    assert (info.created_at, info.expires_at, info.state_bytes) == (100.0, 700.0, 64)
    token = codecs.encode_token(GeneratedToken("s1", 4, "e", 3, 12, FinishReason.STOP))
    assert (token.token_id, token.text, token.index, token.step_count) == (4, "e", 3, 12)
    assert token.finish_reason == pb.FINISH_REASON_STOP
    middle = codecs.encode_token(GeneratedToken("s1", 4, "e", 2, 11))
    assert middle.finish_reason == pb.FINISH_REASON_UNSPECIFIED


@dataclass
class _Description:
    manifest: ModelManifest
    version: int
    versions: list[int]
    state_bytes: int
    max_steps_per_message: int


def test_model_info_carries_what_a_client_needs(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    lm = tiny_manifests["tiny-lstm-lm"]
    info = codecs.encode_model(_Description(lm, 2, [2, 1], 2 * 2 * 12 * 4, 4096))
    assert (info.name, info.version, list(info.versions)) == ("tiny-lstm-lm", 2, [1, 2])
    assert (info.task, info.cell, info.input_kind) == ("language-model", "lstm", "tokens")
    assert info.streamable and not info.bidirectional
    assert list(info.vocabulary) == lm.input.vocabulary  # type: ignore[union-attr]
    assert [s.name for s in info.states] == ["h0", "c0"]
    assert list(info.states[0].shape) == [2, 12]
    assert info.outputs[0].labels == lm.outputs[0].labels
    regressor = tiny_manifests["tiny-regressor"]
    info = codecs.encode_model(_Description(regressor, 1, [1], 32, 64))
    assert info.input_kind == "features" and info.feature_width == 4
    assert not info.vocabulary and info.max_steps_per_message == 64
