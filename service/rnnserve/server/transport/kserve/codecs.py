"""Open Inference Protocol (KServe v2) <-> domain: tensors, sequence parameters, model metadata.

Only what the protocol alone can tell is checked here (tensor names, datatypes, shapes, byte
lengths, parameter types) and the request caps (transport/limits.py: batch, steps, ids), each from
what the request states before a value is copied; what needs the model's state (vocabulary range,
NaN) is the core's and comes back with a path under the input's name (`inputs[0].tokens.ids[3]`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.kserve.v2 import model_config_pb2 as cpb
from rnnserve.server.domain import (
    InputData,
    ModelDescription,
    ModelStatistics,
    OutputOptions,
    OutputSteps,
    StepOutcome,
)
from rnnserve.server.errors import InvalidInput
from rnnserve.server.logs import safe
from rnnserve.server.manifest import ModelManifest, TokenInput
from rnnserve.server.offload import is_large
from rnnserve.server.transport.limits import (
    DEFAULT_LIMITS,
    RequestLimits,
    check_count,
    check_id,
    check_steps,
)

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Request parameters with a meaning here; any other is ignored, as Triton ignores unknown ones.
SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
OUTPUT_STEPS = "output_steps"
SESSION_ID, STEP_COUNT = "rnnserve_session_id", "step_count"
_VERSION = re.compile(r"[0-9]{1,18}")  # a model version as text
# wire datatype -> (little-endian wire dtype, the native dtype the core takes)
_DTYPES: dict[str, tuple[np.dtype[np.generic], np.dtype[np.generic]]] = {
    "INT64": (np.dtype("<i8"), np.dtype(np.int64)),
    "FP32": (np.dtype("<f4"), np.dtype(np.float32)),
}


@dataclass(frozen=True)
class InferCall:
    """One ModelInferRequest as the core sees it."""

    model: str
    version: int
    sequence: str | None  # the client's sequence id (None: a stateless request)
    start: bool
    end: bool
    sequences: list[InputData]  # one per batch row: token ids [T] or features [T, width]
    options: OutputOptions
    outputs: list[str]  # the outputs asked for, manifest names (empty: every output)


def decode_version(version: str, field: str = "model_version") -> int:
    """ "" -> 0 (latest); "2" -> 2."""
    if not version:
        return 0
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses (that was INTERNAL),
    # and int() would read other scripts' digits; 18 digits fit any int64.
    if _VERSION.fullmatch(version) is None:
        raise InvalidInput(f"model version must be a number, got '{safe(version)}'", field=field)
    return int(version)


def check_ids(request: kpb.ModelInferRequest, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """The request's model name and id against max_id_length (before the model is looked up)."""
    check_id(request.model_name, "model_name", limits)
    check_id(request.model_version, "model_version", limits)
    check_id(request.id, "id", limits)


def is_large_request(
    request: kpb.ModelInferRequest, limits: RequestLimits = DEFAULT_LIMITS
) -> bool:
    """Whether the batch the first input's shape states is worth decoding and encoding off the
    event loop (read without decoding; a shape beyond the caps is not: it is refused at once)."""
    if not request.inputs or len(request.inputs[0].shape) < 2:
        return False
    batch, steps = request.inputs[0].shape[0], request.inputs[0].shape[1]
    within = 0 < batch <= limits.max_predict_sequences and 0 < batch * steps <= (
        limits.max_steps_per_message
    )
    return within and is_large(batch, batch * steps)


def decode_call(
    request: kpb.ModelInferRequest, manifest: ModelManifest, limits: RequestLimits = DEFAULT_LIMITS
) -> InferCall:
    """Validate a request against the model's tensors and the caps; the input as one array per
    batch row."""
    check_ids(request, limits)
    sequence, start, end = _sequence_parameters(request, limits)
    if manifest.streamable and sequence is None:
        raise InvalidInput(
            f"inference request to model {manifest.name!r} must specify a non-zero or non-empty "
            "correlation ID (parameter sequence_id): it is a sequence model",
            field=f"parameters.{SEQUENCE_ID}",
        )
    if not request.inputs:
        raise InvalidInput(
            f"model {manifest.name!r} expects input {manifest.input.name!r}", field="inputs"
        )
    if len(request.inputs) > 1:
        raise InvalidInput(
            f"model {manifest.name!r} takes one input, {manifest.input.name!r}; got "
            f"{len(request.inputs):,}",
            field="inputs",
        )
    shape = _check_tensor(request, 0, manifest, limits)
    if sequence is not None and shape[0] != 1:
        raise InvalidInput(
            f"a sequence request carries one sequence (batch 1), got batch {shape[0]}",
            field="inputs[0].shape",
        )
    if len(request.outputs) > len(manifest.outputs):
        raise InvalidInput(
            f"{len(request.outputs):,} outputs asked for; model {manifest.name!r} has "
            f"{len(manifest.outputs)}",
            field="outputs",
        )
    names = {spec.name for spec in manifest.outputs}
    for index, wanted in enumerate(request.outputs):
        if wanted.name not in names:
            check_id(wanted.name, f"outputs[{index}].name", limits)
            raise InvalidInput(
                f"model {manifest.name!r} has no output {wanted.name!r} (outputs: {sorted(names)})",
                field=f"outputs[{index}].name",
            )
    steps = _output_steps(request)
    batch = list(_tensor_data(request, 0, shape))  # the one copy, once everything is checked
    return InferCall(
        model=request.model_name,
        version=decode_version(request.model_version),
        sequence=sequence,
        start=start,
        end=end,
        sequences=batch,
        options=OutputOptions(steps=steps),
        outputs=[wanted.name for wanted in request.outputs],
    )


def _sequence_parameters(
    request: kpb.ModelInferRequest, limits: RequestLimits
) -> tuple[str | None, bool, bool]:
    """(sequence id as text, start, end); id 0 or "" is no sequence, as in Triton."""
    params = request.parameters
    sequence: str | None = None
    if SEQUENCE_ID in params:
        value = params[SEQUENCE_ID]
        kind = value.WhichOneof("parameter_choice")
        if kind == "int64_param":
            sequence = str(value.int64_param) if value.int64_param else None
        elif kind == "uint64_param":
            sequence = str(value.uint64_param) if value.uint64_param else None
        elif kind == "string_param":
            # kept as a key for the sequence's life (and in its tombstone): bounded
            check_id(value.string_param, f"parameters.{SEQUENCE_ID}", limits)
            sequence = value.string_param or None
        else:
            raise InvalidInput(
                f"sequence_id must be an integer or a string, got {kind}",
                field=f"parameters.{SEQUENCE_ID}",
            )
    flags = []
    for name in (SEQUENCE_START, SEQUENCE_END):
        flag = params.get(name)
        if flag is not None and flag.WhichOneof("parameter_choice") not in (None, "bool_param"):
            raise InvalidInput(f"{name} must be a bool", field=f"parameters.{name}")
        flags.append(bool(flag is not None and flag.bool_param))
    return sequence, flags[0], flags[1]


def _output_steps(request: kpb.ModelInferRequest) -> OutputSteps:
    value = request.parameters.get(OUTPUT_STEPS)
    if value is None:
        return OutputSteps.ALL
    text = value.string_param if value.WhichOneof("parameter_choice") == "string_param" else None
    if text not in ("all", "last"):
        got = repr(text) if text is not None and len(text) <= 16 else "another value"
        raise InvalidInput(
            f'output_steps must be "all" or "last", got {got}', field=f"parameters.{OUTPUT_STEPS}"
        )
    return OutputSteps(text)


def _check_tensor(
    request: kpb.ModelInferRequest, index: int, manifest: ModelManifest, limits: RequestLimits
) -> list[int]:
    """Input `index`'s name, datatype and shape against the model and the caps: batch within
    max_predict_sequences, steps (per row and in all) within max_steps_per_message. Every
    dimension is bounded before the element count is taken."""
    tensor = request.inputs[index]
    field = f"inputs[{index}]"
    spec = manifest.input
    if tensor.name != spec.name:
        check_id(tensor.name, f"{field}.name", limits)
        raise InvalidInput(
            f"unexpected inference input {tensor.name!r} for model {manifest.name!r}; it "
            f"expects {spec.name!r}",
            field=f"{field}.name",
        )
    want = "INT64" if isinstance(spec, TokenInput) else "FP32"
    if tensor.datatype != want:
        check_id(tensor.datatype, f"{field}.datatype", limits)
        raise InvalidInput(
            f"inference input {tensor.name!r} data-type is {tensor.datatype!r}, but model "
            f"{manifest.name!r} expects {want!r}",
            field=f"{field}.datatype",
        )
    shape = list(tensor.shape) if len(tensor.shape) <= 3 else []
    rank = 2 if isinstance(spec, TokenInput) else 3
    if (
        len(shape) != rank
        or any(d < 1 for d in shape)
        or (not isinstance(spec, TokenInput) and shape[2] != spec.width)
    ):
        expected = "[batch, steps]" if rank == 2 else f"[batch, steps, {getattr(spec, 'width', 0)}]"
        got = shape if shape else f"rank {len(tensor.shape)}"
        raise InvalidInput(
            f"inference input {tensor.name!r} has shape {got}; model {manifest.name!r} "
            f"expects {expected}",
            field=f"{field}.shape",
        )
    check_count(
        shape[0],
        limits.max_predict_sequences,
        f"{field}.shape[0]",
        "sequences (batch)",
        "max_predict_sequences",
    )
    check_steps(shape[1], f"{field}.shape[1]", limits)
    check_count(
        shape[0] * shape[1],
        limits.max_steps_per_message,
        f"{field}.shape",
        "steps in all",
        "max_steps_per_message",
    )
    return shape


def _tensor_data(
    request: kpb.ModelInferRequest, index: int, shape: list[int]
) -> npt.NDArray[np.generic]:
    """Input `index` (already checked) as an array of `shape`."""
    datatype = request.inputs[index].datatype
    field = f"inputs[{index}]"
    dtype, native = _DTYPES[datatype]
    count = math.prod(shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for "
                f"{len(request.inputs)} inputs",
                field="raw_input_contents",
            )
        raw = request.raw_input_contents[index]
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"expected {count * dtype.itemsize} bytes for {datatype} {shape}, got {len(raw)}",
                field=f"raw_input_contents[{index}]",
            )
        array = np.frombuffer(raw, dtype=dtype)
    else:
        contents = request.inputs[index].contents
        values = contents.int64_contents if datatype == "INT64" else contents.fp32_contents
        if len(values) != count:
            name = "int64_contents" if datatype == "INT64" else "fp32_contents"
            raise InvalidInput(
                f"expected {count} values for {datatype} {shape}, got {len(values)}",
                field=f"{field}.contents.{name}",
            )
        array = np.fromiter(values, dtype=dtype, count=count)
    # astype: a writable, native-order copy the core may keep
    result: npt.NDArray[np.generic] = array.reshape(shape).astype(native)
    return result


def encode_response(
    request: kpb.ModelInferRequest,
    description: ModelDescription,
    call: InferCall,
    outcomes: list[StepOutcome],
    session: tuple[str, int] | None = None,
) -> kpb.ModelInferResponse:
    """Each output (those asked for, else all) as FP32 [batch, steps, ...] in raw contents."""
    response = kpb.ModelInferResponse(
        model_name=description.manifest.name,
        model_version=str(description.version),
        id=request.id,
    )
    if session is not None:
        response.parameters[SESSION_ID].string_param = session[0]
        response.parameters[STEP_COUNT].int64_param = session[1]
    for index, spec in enumerate(description.manifest.outputs):
        if call.outputs and spec.name not in call.outputs:
            continue
        rows = [outcome.outputs[index].tensor for outcome in outcomes]
        tensors = [r for r in rows if r is not None]  # raw outputs: always set
        # one sequence (every sequence request): a view with the batch axis, no stacking copy
        batch = tensors[0][np.newaxis] if len(tensors) == 1 else np.stack(tensors)
        data = batch.astype("<f4", copy=False)
        response.outputs.add(name=spec.name, datatype="FP32", shape=data.shape)
        response.raw_output_contents.append(data.tobytes())
    return response


def _batch_dim(manifest: ModelManifest) -> int:
    """A sequence request carries one sequence; a stateless one any number (-1)."""
    return 1 if manifest.streamable else -1


def _input_shape(manifest: ModelManifest) -> list[int]:
    spec = manifest.input
    steps = [_batch_dim(manifest), -1]
    return steps if isinstance(spec, TokenInput) else [*steps, spec.width]


def _output_shape(manifest: ModelManifest, index: int) -> list[int]:
    return [_batch_dim(manifest), -1, *manifest.outputs[index].shape]


def encode_metadata(description: ModelDescription) -> kpb.ModelMetadataResponse:
    """Name, versions, platform and tensors of a model."""
    manifest = description.manifest
    datatype = "INT64" if isinstance(manifest.input, TokenInput) else "FP32"
    return kpb.ModelMetadataResponse(
        name=manifest.name,
        versions=[str(v) for v in description.versions],
        platform=PLATFORM,
        inputs=[
            kpb.ModelMetadataResponse.TensorMetadata(
                name=manifest.input.name, datatype=datatype, shape=_input_shape(manifest)
            )
        ],
        outputs=[
            kpb.ModelMetadataResponse.TensorMetadata(
                name=spec.name, datatype="FP32", shape=_output_shape(manifest, index)
            )
            for index, spec in enumerate(manifest.outputs)
        ],
    )


def encode_config(description: ModelDescription, idle_s: float) -> cpb.ModelConfig:
    """Triton's model configuration: a sequence model (sequence_batching) when streamable."""
    manifest = description.manifest
    token = isinstance(manifest.input, TokenInput)
    config = cpb.ModelConfig(
        name=manifest.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=0,  # dims below are the full request shapes
        input=[
            cpb.ModelInput(
                name=manifest.input.name,
                data_type=cpb.TYPE_INT64 if token else cpb.TYPE_FP32,
                dims=_input_shape(manifest),
            )
        ],
        output=[
            cpb.ModelOutput(
                name=spec.name, data_type=cpb.TYPE_FP32, dims=_output_shape(manifest, index)
            )
            for index, spec in enumerate(manifest.outputs)
        ],
        instance_group=[cpb.ModelInstanceGroup(kind=cpb.ModelInstanceGroup.KIND_CPU, count=1)],
        model_transaction_policy=cpb.ModelTransactionPolicy(decoupled=False),
    )
    config.parameters["task"].string_value = manifest.task
    config.parameters["cell"].string_value = manifest.cell
    if manifest.streamable:
        config.sequence_batching.max_sequence_idle_microseconds = round(idle_s * 1e6)
        config.sequence_batching.oldest.max_candidate_sequences = 0  # every live session
    return config


def encode_statistics(statistics: ModelStatistics) -> kpb.ModelStatistics:
    """Counts and cumulative durations (ns) of one model version.

    success = time in the queue plus time in the model, per inference (sequence run), summed.
    """
    queue_ns = round(statistics.queue_s * 1e9)
    compute_ns = round(statistics.compute_s * 1e9)
    count = statistics.inferences
    return kpb.ModelStatistics(
        name=statistics.name,
        version=str(statistics.version),
        last_inference=round(statistics.last_inference * 1000),
        inference_count=count,
        execution_count=statistics.executions,
        inference_stats=kpb.InferStatistics(
            success=kpb.StatisticDuration(count=count, ns=queue_ns + compute_ns),
            queue=kpb.StatisticDuration(count=count, ns=queue_ns),
            # Input and output handling are not timed apart from the model call (their time is
            # in neither figure); the counts match, as clients such as perf_analyzer require.
            compute_input=kpb.StatisticDuration(count=count),
            compute_infer=kpb.StatisticDuration(count=count, ns=compute_ns),
            compute_output=kpb.StatisticDuration(count=count),
        ),
    )
