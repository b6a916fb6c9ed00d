"""Codec, vocabulary and error conversion of the client, without a server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from rnnserve.client import (
    Aborted,
    FinishReason,
    InvalidArgument,
    NotFound,
    OutputFormat,
    OutputSteps,
    ResourceExhausted,
    RnnServeError,
    Unavailable,
    Vocabulary,
)
from rnnserve.client._codec import (
    decode_model,
    decode_result,
    decode_tensor,
    decode_token,
    encode_input,
    encode_options,
    encode_tensor,
    output_options,
)
from rnnserve.client._errors import from_rpc_error, from_stream_error
from rnnserve.client._requests import aim_generation, generation_settings
from rnnserve.client._retry import RetryPolicy
from rnnserve.v1 import rnnserve_pb2 as pb


def test_tensor_round_trip_keeps_values_shape_and_dtype() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    tensor = encode_tensor(array)
    assert tensor.dtype == pb.DATA_TYPE_FLOAT32
    assert list(tensor.shape) == [3, 4]
    assert tensor.raw_data == array.astype("<f4").tobytes()
    decoded = decode_tensor(tensor)
    np.testing.assert_array_equal(decoded, array)
    decoded[0, 0] = 5  # the client hands out writable arrays
    assert decoded.dtype == np.float32


def test_decode_tensor_refuses_a_size_mismatch() -> None:
    tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 3], raw_data=b"\0" * 20)
    with pytest.raises(ValueError, match="needs 24 bytes, got 20"):
        decode_tensor(tensor)


def test_encode_input_token_ids_text_and_features() -> None:
    vocabulary = Vocabulary(list("abc"))
    assert list(encode_input([2, 0, 1]).tokens.ids) == [2, 0, 1]
    assert list(encode_input(np.array([1, 2], dtype=np.int32)).tokens.ids) == [1, 2]
    # Text the vocabulary covers goes as ids; other text goes as text for the server to judge.
    assert list(encode_input("cab", vocabulary).tokens.ids) == [2, 0, 1]
    assert encode_input("cat", vocabulary).text == "cat"
    assert encode_input("cab").text == "cab"
    frames = encode_input(np.ones((2, 3), dtype=np.float64))
    assert frames.features.dtype == pb.DATA_TYPE_FLOAT32
    assert list(frames.features.shape) == [2, 3]
    assert list(encode_input([]).tokens.ids) == []
    with pytest.raises(TypeError):
        encode_input(b"abc")
    with pytest.raises(TypeError):
        encode_input(["a", "b"])


def test_vocabulary_encodes_characters_and_decodes_ids() -> None:
    vocabulary = Vocabulary(["a", "b", " ", "<eos>", "a"])
    np.testing.assert_array_equal(vocabulary.encode("ab a"), [0, 1, 2, 0])
    assert vocabulary.decode([3, 0, 1]) == "<eos>ab"
    assert vocabulary.can_encode("ba b") and not vocabulary.can_encode("abc")
    with pytest.raises(KeyError, match=r"text\[2\]"):
        vocabulary.encode("abc")
    with pytest.raises(IndexError):
        vocabulary.decode([5])
    assert len(vocabulary) == 5


def test_output_options_accept_strings_and_enums() -> None:
    options = output_options("top_k", "last", 3)
    assert options.format is OutputFormat.TOP_K and options.steps is OutputSteps.LAST
    wire = encode_options(options)
    assert (wire.format, wire.steps, wire.top_k) == (
        pb.OUTPUT_FORMAT_TOP_K,
        pb.OUTPUT_STEPS_LAST,
        3,
    )
    with pytest.raises(ValueError):
        output_options("logits")


def test_decode_result_gives_numpy_outputs() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    result = pb.StepResult(
        outputs=[
            pb.Output(
                name="logits",
                meaning="logits",
                tensor=encode_tensor(logits),
                argmax=[1, 0],
                labels=["yes", "no"],
                top_k=[
                    pb.TopK(indices=[1, 0], probabilities=[0.9, 0.1], labels=["yes", "no"]),
                    pb.TopK(indices=[0, 1], probabilities=[0.8, 0.2], labels=["no", "yes"]),
                ],
            ),
            pb.Output(name="value", meaning="value", tensor=encode_tensor(np.ones((2, 1), "f4"))),
        ],
        steps=2,
        step_count=7,
    )
    output = decode_result(result)
    assert (output.steps, output.step_count) == (2, 7)
    np.testing.assert_array_equal(output.tensor, logits)
    np.testing.assert_array_equal(output.argmax, [1, 0])
    assert output.labels == ("yes", "no")
    np.testing.assert_array_equal(output.top_k_indices, [[1, 0], [0, 1]])
    np.testing.assert_allclose(output.top_k_probabilities, [[0.9, 0.1], [0.8, 0.2]])
    assert output["logits"].top_k_labels == (("yes", "no"), ("no", "yes"))
    assert output["value"].argmax is None and output["value"].tensor.shape == (2, 1)
    assert [o.name for o in output] == ["logits", "value"]


def test_decode_model_builds_the_vocabulary() -> None:
    info = decode_model(
        pb.ModelInfo(
            name="m",
            version=3,
            versions=[1, 3],
            input_kind="tokens",
            vocabulary=["x", "y"],
            outputs=[pb.OutputInfo(name="o", meaning="logits", shape=[2], labels=["x", "y"])],
            metrics={"accuracy": 0.5},
        )
    )
    assert info.vocabulary is not None and info.vocabulary.decode([1, 0]) == "yx"
    assert info.versions == (1, 3) and info.outputs[0].labels == ("x", "y")
    assert info.metrics == {"accuracy": 0.5}
    assert decode_model(pb.ModelInfo(name="f", input_kind="features")).vocabulary is None


def test_generate_request_sets_only_what_was_given() -> None:
    request = aim_generation(
        generation_settings(max_tokens=5, stop=["."]), model="m", version=2, prompt="ab"
    )
    assert request.model.name == "m" and request.model.version == 2
    assert request.text == "ab" and request.max_tokens == 5 and list(request.stop) == ["."]
    assert not request.sampling.HasField("temperature") and not request.sampling.HasField("seed")
    request = aim_generation(
        generation_settings(max_tokens=1, temperature=0.0, seed=0), session_id="s", prompt=[1, 2]
    )
    assert request.session_id == "s" and list(request.tokens.ids) == [1, 2]
    # temperature 0 (greedy) and seed 0 must travel: they are explicit presence fields.
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0.0
    assert request.sampling.HasField("seed") and request.sampling.seed == 0
    assert not aim_generation(generation_settings(max_tokens=1), model="m", prompt="").HasField(
        "text"
    )


def test_decode_token_maps_the_finish_reason() -> None:
    token = decode_token(
        pb.GenerateResponse(
            session_id="s",
            token_id=3,
            text="d",
            index=4,
            step_count=9,
            finish_reason=pb.FINISH_REASON_STOP,
        )
    )
    assert (token.text, token.index, token.step_count) == ("d", 4, 9)
    assert token.finish_reason is FinishReason.STOP
    assert decode_token(pb.GenerateResponse()).finish_reason is None


def test_stream_error_becomes_the_matching_exception_with_its_field() -> None:
    error = from_stream_error(
        pb.Error(
            code=3,
            code_name="INVALID_ARGUMENT",
            message="token id 9 outside [0, 5)",
            field="step.tokens.ids[1]",
        )
    )
    assert isinstance(error, InvalidArgument) and isinstance(error, RnnServeError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "step.tokens.ids[1]"
    assert error.message == "token id 9 outside [0, 5)"
    assert "step.tokens.ids[1]" in str(error)
    busy = from_stream_error(pb.Error(code=10, code_name="ABORTED", message="busy"))
    assert isinstance(busy, Aborted) and busy.field is None
    full = from_stream_error(
        pb.Error(code=8, code_name="RESOURCE_EXHAUSTED", message="queue full", retry_after_ms=40)
    )
    assert isinstance(full, ResourceExhausted) and full.retry_after == pytest.approx(0.04)


def test_rpc_error_reads_field_and_retry_hint_from_rich_details() -> None:
    status = status_pb2.Status(code=3, message="bad width")
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="input.features")]
        )
    )
    status.details.append(detail)
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=300_000_000)))
    status.details.append(retry)
    error = from_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad width",
        (("grpc-status-details-bin", status.SerializeToString()),),
    )
    assert isinstance(error, InvalidArgument)
    assert error.field == "input.features" and error.retry_after == pytest.approx(0.3)


def _details(*details: object) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying google.rpc rich error details, as the server sends them."""
    status = status_pb2.Status()
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_rpc_error_falls_back_to_retry_metadata_and_reads_the_field_from_error_info() -> None:
    error = from_rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", (("retry-after-ms", "120"),)
    )
    assert isinstance(error, ResourceExhausted) and error.retry_after == pytest.approx(0.12)
    error = from_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "sequences[2].tokens.ids[3]: token id 500 too big",
        _details(
            error_details_pb2.ErrorInfo(
                reason="INVALID_INPUT",
                domain="rnnserve.v1",
                metadata={"field": "sequences[2].tokens.ids[3]"},
            )
        ),
    )
    assert error.field == "sequences[2].tokens.ids[3]"
    assert isinstance(from_rpc_error(grpc.StatusCode.NOT_FOUND, "gone", None), NotFound)
    assert isinstance(from_rpc_error(grpc.StatusCode.UNAVAILABLE, None, None), Unavailable)


def test_retry_policy_retries_only_unavailable_within_its_attempts() -> None:
    policy = RetryPolicy(attempts=3, initial_backoff=0.1, max_backoff=0.3)
    assert policy.should_retry(grpc.StatusCode.UNAVAILABLE, 1)
    assert policy.should_retry(grpc.StatusCode.UNAVAILABLE, 2)
    assert not policy.should_retry(grpc.StatusCode.UNAVAILABLE, 3)
    assert not policy.should_retry(grpc.StatusCode.ABORTED, 1)
    assert not policy.should_retry(grpc.StatusCode.DEADLINE_EXCEEDED, 1)
    assert 0.1 <= policy.backoff(1) <= 0.12
    assert 0.3 <= policy.backoff(5) <= 0.36


def test_rpc_error_reads_the_reason_from_error_info() -> None:
    status = status_pb2.Status(code=5, message="session_id: session 'x' expired")
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="SESSION_NOT_FOUND",
            domain="rnnserve.v1",
            metadata={"reason": "expired", "field": "session_id"},
        )
    )
    status.details.append(info)
    error = from_rpc_error(
        grpc.StatusCode.NOT_FOUND,
        status.message,
        (("grpc-status-details-bin", status.SerializeToString()),),
    )
    assert isinstance(error, NotFound)
    assert error.reason == "expired" and error.field == "session_id"
    assert str(error) == "NOT_FOUND: session_id: session 'x' expired"


def test_the_field_is_never_read_from_the_message_text() -> None:
    # Only structured places name the field: a message that merely starts with a path does not.
    error = from_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, "sequences[2].tokens.ids[3]: token id 500 too big", None
    )
    assert isinstance(error, InvalidArgument) and error.field is None
    assert str(error) == "INVALID_ARGUMENT: sequences[2].tokens.ids[3]: token id 500 too big"
    in_band = from_stream_error(
        pb.Error(code=3, code_name="INVALID_ARGUMENT", message="step.text[0]: not in vocabulary")
    )
    assert in_band.field is None
    # A BadRequest violation names it for INVALID_ARGUMENT; ErrorInfo metadata for any code.
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="input.text[2]")]
    )
    error = from_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", _details(bad_request))
    assert error.field == "input.text[2]"
    info = error_details_pb2.ErrorInfo(reason="SESSION_BUSY", metadata={"field": "session_id"})
    assert from_rpc_error(grpc.StatusCode.ABORTED, "busy", _details(info)).field == "session_id"


def test_a_model_with_a_tokenizer_leaves_its_text_to_the_server() -> None:
    words = decode_model(pb.ModelInfo(name="m", vocabulary=["a", "b"], tokenizer="brown-v1"))
    chars = decode_model(pb.ModelInfo(name="m", vocabulary=["a", "b"]))
    assert words.vocabulary is not None and not words.vocabulary.can_encode("ab")
    assert chars.vocabulary is not None and chars.vocabulary.can_encode("ab")
