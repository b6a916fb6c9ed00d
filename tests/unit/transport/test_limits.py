"""Request caps, checked from what a request states before anything is decoded: each cap's field
and message, shapes that would overflow, the gRPC receive limit and how it is derived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.server.errors import InvalidInput
from rnnserve.server.inputs import TextCodec
from rnnserve.server.manifest import ModelManifest, TokenInput
from rnnserve.server.settings import Settings
from rnnserve.server.transport import codecs
from rnnserve.server.transport.kserve import codecs as kcodecs
from rnnserve.server.transport.limits import (
    DEFAULT_LIMITS,
    REQUEST_OVERHEAD_BYTES,
    SEQUENCE_OVERHEAD_BYTES,
    RequestLimits,
    ServedShapes,
    body_limit,
    limits_for,
    max_request_bytes,
    server_options,
)
from rnnserve.v1 import rnnserve_pb2 as pb

SMALL = RequestLimits(
    max_steps_per_message=8,
    max_text_bytes=16,
    max_predict_sequences=3,
    max_stop_strings=2,
    max_stop_string_bytes=4,
    max_id_length=16,  # the tiny models' names fit
    max_generate_tokens=5,
)


def refused(call: Any, *args: Any, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kwargs)
    return caught.value


def features(shape: list[int], raw: bytes = b"") -> pb.StepInput:
    return pb.StepInput(features=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=shape, raw_data=raw))


def test_defaults_are_the_settings_defaults() -> None:
    assert RequestLimits.from_settings(Settings()) == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_text_bytes == 65_536 and DEFAULT_LIMITS.max_id_length == 128


# ---- one message ----------------------------------------------------------------------------


def test_token_ids_over_the_step_cap_are_refused_with_count_and_limit() -> None:
    ok = codecs.decode_input(pb.StepInput(tokens=pb.TokenIds(ids=[1] * 8)), "input", SMALL)
    assert len(ok) == 8
    err = refused(
        codecs.decode_input, pb.StepInput(tokens=pb.TokenIds(ids=[1] * 9)), "input", SMALL
    )
    assert err.field == "input.tokens.ids"
    assert "9 steps" in err.message and "max_steps_per_message 8" in err.message


def test_text_is_capped_in_utf8_bytes_not_characters() -> None:
    assert codecs.decode_input(pb.StepInput(text="é" * 8), "step", SMALL) == "é" * 8  # 16 bytes
    err = refused(codecs.decode_input, pb.StepInput(text="é" * 9), "step", SMALL)  # 18 bytes
    assert err.field == "step.text"
    assert "18 UTF-8 bytes" in err.message and "max_text_bytes 16" in err.message
    # far over the cap: refused from its length alone, the text never quoted
    err = refused(codecs.decode_input, pb.StepInput(text="x" * 100_000), "step", SMALL)
    assert "at least 100,000" in err.message and "xxx" not in err.message


def test_feature_rows_are_capped_from_the_declared_shape() -> None:
    err = refused(codecs.decode_input, features([9, 2], b"\0" * 72), "input", SMALL)
    assert err.field == "input.features.shape[0]" and "max_steps_per_message 8" in err.message


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ([0, 2**62], "input.features.shape[1]"),  # the issue's INTERNAL: numpy cannot hold it
        ([2**62, 0], "input.features.shape[0]"),
        ([2**31, 2**33], "input.features.shape[0]"),  # the product would pass 2**64
    ],
)
def test_shapes_too_big_for_any_message_are_invalid_not_internal(
    shape: list[int], field: str
) -> None:
    err = refused(codecs.decode_input, features(shape), "input")
    assert err.field == field
    assert "more elements than one message can carry" in err.message


def test_negative_and_wrong_rank_shapes_name_the_shape() -> None:
    err = refused(codecs.decode_input, features([-1, 2]), "input")
    assert err.field == "input.features.shape" and "expected [steps, width]" in err.message
    err = refused(codecs.decode_input, features([1] * 1000), "input")
    assert err.message == "expected [steps, width], got rank 1000"  # the shape is not echoed


def test_over_long_ids_are_refused_without_echoing_them() -> None:
    long_id = "s" * 17
    err = refused(codecs.decode_session_id, long_id, limits=SMALL)
    assert err.field == "session_id" and "17 characters exceed max_id_length 16" in err.message
    assert long_id not in err.message
    err = refused(codecs.decode_model_ref, pb.ModelRef(name="m" * 17), limits=SMALL)
    assert err.field == "model.name"


# ---- Predict ---------------------------------------------------------------------------------


def tokens(count: int) -> pb.StepInput:
    return pb.StepInput(tokens=pb.TokenIds(ids=[1] * count))


def test_predict_sequence_count_is_checked_before_any_sequence() -> None:
    assert codecs.check_predict([tokens(2)] * 3, SMALL) == 6
    err = refused(codecs.check_predict, [tokens(1)] * 200_000, SMALL)
    assert err.field == "sequences"
    assert "200,000 sequences exceed max_predict_sequences 3" in err.message
    assert refused(codecs.check_predict, [], SMALL).message == "at least one sequence is required"


def test_predict_is_held_to_one_message_of_steps_and_of_text() -> None:
    err = refused(codecs.check_predict, [tokens(5), features([4, 2], b"\0" * 32)], SMALL)
    assert err.field == "sequences" and "9 steps in all exceed max_steps_per_message 8" in (
        err.message
    )
    texts = [pb.StepInput(text="abcdefghi"), pb.StepInput(text="abcdefghi")]
    err = refused(codecs.check_predict, texts, SMALL)
    assert err.field == "sequences" and "18 UTF-8 bytes in all" in err.message


# ---- Generate --------------------------------------------------------------------------------


def generate(**fields: Any) -> pb.GenerateRequest:
    values: dict[str, Any] = {"model": pb.ModelRef(name=tm.GRU_LM), "max_tokens": 3}
    values.update(fields)
    return pb.GenerateRequest(**values)


@pytest.mark.parametrize(
    ("request_", "field", "fragment"),
    [
        (generate(stop=["a", "b", "c"]), "stop", "3 stop strings exceed max_stop_strings 2"),
        (generate(stop=["ab", "éé", "ééé"]), "stop", "3 stop strings"),  # count before bytes
        (generate(stop=["ok", "ééé"]), "stop[1]", "6 UTF-8 bytes exceed max_stop_string_bytes 4"),
        (generate(max_tokens=6), "max_tokens", "6 exceeds max_generate_tokens 5"),
        (generate(text="x" * 17), "text", "max_text_bytes 16"),
        (generate(tokens=pb.TokenIds(ids=[1] * 9)), "tokens.ids", "max_steps_per_message 8"),
        (generate(model=None, session_id="s" * 17), "session_id", "max_id_length 16"),
        (
            generate(sampling=pb.SamplingParams(temperature=float("nan"))),
            "sampling.temperature",
            "finite",
        ),
        (generate(sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p", "[0, 1]"),
    ],
)
def test_generate_caps_name_their_field(
    request_: pb.GenerateRequest, field: str, fragment: str
) -> None:
    err = refused(codecs.decode_generation, request_, SMALL)
    assert err.field == field and fragment in err.message


def test_generate_within_every_cap_decodes() -> None:
    request = generate(stop=["ab", "éé"], text="x" * 16, max_tokens=5)
    generation = codecs.decode_generation(request, SMALL)
    assert generation.stop == ("ab", "éé") and generation.max_tokens == 5


# ---- KServe ----------------------------------------------------------------------------------


def infer(manifest: ModelManifest, shape: list[int], **fields: Any) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=manifest.name, **fields)
    request.inputs.add(name=manifest.input.name, datatype="INT64", shape=shape)
    count = int(np.prod(shape)) if all(d < 2**20 for d in shape) else 0
    request.raw_input_contents.append(np.ones(count, "<i8").tobytes())
    return request


@pytest.mark.parametrize(
    ("shape", "field", "fragment"),
    [
        ([4, 1], "inputs[0].shape[0]", "4 sequences (batch) exceed max_predict_sequences 3"),
        ([1, 9], "inputs[0].shape[1]", "9 steps in one message exceed max_steps_per_message 8"),
        ([3, 3], "inputs[0].shape", "9 steps in all exceed max_steps_per_message 8"),
        ([1, 2**62], "inputs[0].shape[1]", "max_steps_per_message 8"),
        ([2**62, 2**62], "inputs[0].shape[0]", "max_predict_sequences 3"),
    ],
)
def test_kserve_batches_are_capped_from_the_declared_shape(
    tiny_manifests: dict[str, ModelManifest], shape: list[int], field: str, fragment: str
) -> None:
    manifest = tiny_manifests[tm.TAGGER]  # stateless: any batch
    err = refused(kcodecs.decode_call, infer(manifest, shape), manifest, SMALL)
    assert err.field == field and fragment in err.message


def test_kserve_ids_and_outputs_are_capped(tiny_manifests: dict[str, ModelManifest]) -> None:
    manifest = tiny_manifests[tm.TAGGER]
    err = refused(kcodecs.decode_call, infer(manifest, [1, 2], id="r" * 17), manifest, SMALL)
    assert err.field == "id" and "max_id_length 16" in err.message
    request = infer(manifest, [1, 2])
    request.model_name = "m" * 17
    assert refused(kcodecs.check_ids, request, SMALL).field == "model_name"
    request = infer(manifest, [1, 2])
    for _ in range(1000):
        request.outputs.add(name="logits")
    err = refused(kcodecs.decode_call, request, manifest, SMALL)
    assert err.field == "outputs" and "1,000 outputs asked for" in err.message


def test_kserve_large_batches_are_decoded_off_the_loop_and_refused_ones_are_not(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    manifest = tiny_manifests[tm.TAGGER]
    assert not kcodecs.is_large_request(infer(manifest, [1, 4]))
    assert kcodecs.is_large_request(infer(manifest, [64, 4]))
    assert kcodecs.is_large_request(infer(manifest, [1, 1024]))
    assert not kcodecs.is_large_request(infer(manifest, [2000, 1]))  # over the caps: refused


# ---- the gRPC receive limit ------------------------------------------------------------------


def test_receive_limit_is_the_largest_legal_request_plus_overhead() -> None:
    # 4096 steps of 22 float32 features (births-lstm) dominate: 360,448 bytes of frames
    shapes = ServedShapes(feature_frame_bytes=88, snapshot_tensor_bytes=4_000)
    frames = 4096 * 88
    expected = frames + 1024 * SEQUENCE_OVERHEAD_BYTES + REQUEST_OVERHEAD_BYTES
    assert max_request_bytes(DEFAULT_LIMITS, shapes) == expected
    # a model with a large state: its snapshot is then the largest request
    big_state = ServedShapes(feature_frame_bytes=0, snapshot_tensor_bytes=8_000_000)
    assert 8_000_000 < max_request_bytes(DEFAULT_LIMITS, big_state) < 8_000_000 + 200_000


def test_the_largest_legal_requests_fit_and_the_issue_requests_do_not() -> None:
    limit = max_request_bytes(DEFAULT_LIMITS, ServedShapes(feature_frame_bytes=88))
    frames = np.ones((4, 22), "<f4").tobytes()
    predict = pb.PredictRequest(  # 1024 sequences, 4096 steps of 22 features in all
        model=pb.ModelRef(name="births-lstm"),
        sequences=[features([4, 22], frames)] * 1024,
    )
    largest_text = pb.StepRequest(session_id="s" * 128, input=pb.StepInput(text="é" * 32_768))
    generate_request = pb.GenerateRequest(
        session_id="s" * 128,
        tokens=pb.TokenIds(ids=[2**62] * 4096),  # 10-byte varints: the widest ids
        stop=["é" * 128] * 16,
        max_tokens=4096,
    )
    for request in (predict, largest_text, generate_request):
        assert request.ByteSize() <= limit
    huge_text = pb.StepRequest(session_id="s" * 32, input=pb.StepInput(text="x" * 3_900_000))
    many = pb.PredictRequest(model=pb.ModelRef(name="char-lstm"), sequences=[tokens(1)] * 200_000)
    assert huge_text.ByteSize() > limit and many.ByteSize() > limit


def test_server_options_refuse_big_messages_and_metadata() -> None:
    limits = DEFAULT_LIMITS.with_message_bytes(500_000)
    assert dict(server_options(limits)) == {
        "grpc.max_receive_message_length": 500_000,
        "grpc.max_metadata_size": 16_384,
        "grpc.absolute_max_metadata_size": 16_384,  # soft = hard: no random refusals between
    }


def test_limits_for_settings_reads_the_served_manifests(tiny_repository: Path) -> None:
    settings = Settings(model_repository=tiny_repository, max_steps_per_message=100_000)
    limits = limits_for(settings)
    # tiny-regressor's 4 float32 features are the widest frame: 100,000 steps of 16 bytes
    assert limits.max_message_bytes == 100_000 * 16 + 1024 * 48 + REQUEST_OVERHEAD_BYTES
    only_tokens = settings.model_copy(update={"models": [tm.GRU_LM]})
    assert limits_for(only_tokens).max_message_bytes < limits.max_message_bytes
    missing = settings.model_copy(update={"model_repository": tiny_repository / "nowhere"})
    assert limits_for(missing).max_message_bytes > 0  # the start reports the missing folder


# ---- text encoding stops as soon as a text is too long ---------------------------------------


def test_symbol_text_longer_than_the_cap_is_refused_before_encoding() -> None:
    codec = TextCodec(TokenInput(name="x", vocabulary=list("ab")), "m")
    err = refused(codec.encode, "z" * 1_000_000, "text", 8)  # unknown symbols: never looked at
    assert err.field == "text" and "at least 1000000 steps" in err.message
    assert codec.encode("abba", "text", 8).tolist() == [0, 1, 1, 0]
    err = refused(codec.encode, "abzb", "text", 8)
    assert err.field == "text[2]"


def test_word_text_stops_tokenizing_once_over_the_cap() -> None:
    vocabulary = ["<unk>", "a", "b"]
    for tokenizer in ("lower-words-v1", "brown-v1"):
        spec = TokenInput(name="x", vocabulary=vocabulary, unknown_token=0, tokenizer=tokenizer)
        codec = TextCodec(spec, "m")
        assert codec.encode("a b zz", "text", 3).tolist() == [1, 2, 0]
        err = refused(codec.encode, "a " * 100_000, "text", 3)
        assert "steps in one message exceed max_steps_per_message 3" in err.message
        assert int(err.message.split()[2]) < 10  # it stopped right after the cap


def test_body_limits_fit_the_largest_legal_request_of_each_method() -> None:
    limits = RequestLimits()
    for method in ("Step", "Stream", "Predict", "ImportState", "ModelInfer", "ModelStreamInfer"):
        assert body_limit(method, limits) is None  # payloads: gRPC's receive limit only
    largest = pb.GenerateRequest(
        session_id="s" * limits.max_id_length,
        text="é" * (limits.max_text_bytes // 2),
        stop=["é" * (limits.max_stop_string_bytes // 2)] * limits.max_stop_strings,
        max_tokens=limits.max_generate_tokens,
    )
    generate = body_limit("Generate", limits)
    assert generate is not None and len(largest.SerializeToString()) < generate
    too_many_stops = pb.GenerateRequest(stop=["ab"] * 100_000)
    assert len(too_many_stops.SerializeToString()) > generate
    assert body_limit("GetSession", limits) == body_limit("Check", limits) == 64 * 1024
