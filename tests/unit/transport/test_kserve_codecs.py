"""KServe v2 codecs: sequence parameters, tensors, metadata and config, no server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.kserve.v2 import model_config_pb2 as cpb
from rnnserve.server.domain import ModelDescription, OutputSteps
from rnnserve.server.errors import InvalidInput
from rnnserve.server.manifest import ModelManifest
from rnnserve.server.transport.kserve import codecs


def describe(manifest: ModelManifest) -> ModelDescription:
    return ModelDescription(manifest, 1, [1], manifest.state_bytes, 64)


def infer_request(
    manifest: ModelManifest, array: Any, datatype: str, **params: Any
) -> kpb.ModelInferRequest:
    message = kpb.ModelInferRequest(model_name=manifest.name)
    message.inputs.add(name=manifest.input.name, datatype=datatype, shape=list(array.shape))
    message.raw_input_contents.append(array.tobytes())
    for key, value in params.items():
        setattr(message.parameters[key], value[0], value[1])
    return message


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (("int64_param", 12), "12"),
        (("uint64_param", 2**63 + 5), str(2**63 + 5)),
        (("string_param", "user-7"), "user-7"),
    ],
)
def test_sequence_ids_of_every_kind(
    tiny_manifests: dict[str, ModelManifest], param: tuple[str, Any], expected: str
) -> None:
    manifest = tiny_manifests[tm.GRU_LM]
    ids = np.array([[1, 2]], dtype="<i8")
    call = codecs.decode_call(
        infer_request(
            manifest, ids, "INT64", sequence_id=param, sequence_start=("bool_param", True)
        ),
        manifest,
    )
    assert (call.sequence, call.start, call.end) == (expected, True, False)
    np.testing.assert_array_equal(call.sequences[0], [1, 2])
    assert call.options.steps is OutputSteps.ALL


def test_id_zero_is_no_sequence_and_a_sequence_model_needs_one(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    manifest = tiny_manifests[tm.GRU_LM]
    request = infer_request(
        manifest, np.array([[1]], "<i8"), "INT64", sequence_id=("int64_param", 0)
    )
    with pytest.raises(InvalidInput, match="correlation ID") as caught:
        codecs.decode_call(request, manifest)
    assert caught.value.field == "parameters.sequence_id"


def test_stateless_requests_carry_a_batch_of_feature_sequences(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    manifest = tiny_manifests[tm.TAGGER]  # whole-sequence: stateless, any batch
    ids = np.arange(6, dtype="<i8").reshape(2, 3)
    call = codecs.decode_call(infer_request(manifest, ids, "INT64"), manifest)
    assert call.sequence is None and len(call.sequences) == 2
    np.testing.assert_array_equal(call.sequences[1], [3, 4, 5])


def test_sequence_requests_carry_one_sequence(tiny_manifests: dict[str, ModelManifest]) -> None:
    manifest = tiny_manifests[tm.REGRESSOR]
    frames = np.zeros((2, 3, 4), dtype="<f4")
    request = infer_request(manifest, frames, "FP32", sequence_id=("int64_param", 3))
    with pytest.raises(InvalidInput, match="batch 2") as caught:
        codecs.decode_call(request, manifest)
    assert caught.value.field == "inputs[0].shape"


def test_metadata_and_config_describe_tensors_and_the_sequence_batcher(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    regressor = describe(tiny_manifests[tm.REGRESSOR])
    metadata = codecs.encode_metadata(regressor)
    assert (metadata.inputs[0].datatype, list(metadata.inputs[0].shape)) == ("FP32", [1, -1, 4])
    assert list(metadata.outputs[0].shape) == [1, -1, 2]
    config = codecs.encode_config(regressor, idle_s=600)
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    assert config.sequence_batching.max_sequence_idle_microseconds == 600_000_000
    assert config.input[0].data_type == cpb.TYPE_FP32 and config.max_batch_size == 0
    tagger = codecs.encode_config(describe(tiny_manifests[tm.TAGGER]), idle_s=600)
    assert tagger.WhichOneof("scheduling_choice") is None  # not a sequence model
    assert list(tagger.input[0].dims) == [-1, -1]


def test_an_overlong_string_sequence_id_is_refused(
    tiny_manifests: dict[str, ModelManifest],
) -> None:
    manifest = tiny_manifests[tm.GRU_LM]
    ids = np.array([[1]], dtype="<i8")
    longest = infer_request(manifest, ids, "INT64", sequence_id=("string_param", "x" * 128))
    assert codecs.decode_call(longest, manifest).sequence == "x" * 128  # max_id_length's default
    request = infer_request(manifest, ids, "INT64", sequence_id=("string_param", "x" * 129))
    with pytest.raises(InvalidInput, match="129 characters exceed max_id_length 128") as caught:
        codecs.decode_call(request, manifest)
    assert caught.value.field == "parameters.sequence_id"
