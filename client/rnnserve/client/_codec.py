"""Converts between numpy/Python values and the rnnserve.v1 protobuf messages."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from rnnserve.client._types import (
    FinishReason,
    GeneratedToken,
    InputLike,
    ModelInfo,
    ModelOutput,
    OutputFormat,
    OutputInfo,
    OutputOptions,
    OutputSteps,
    SessionInfo,
    StateInfo,
    StepOutput,
)
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb

# Little-endian numpy dtypes of each wire DataType, as the proto prescribes.
_DTYPES: dict[int, np.dtype[np.generic]] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
_WIRE_TYPES: dict[str, pb.DataType.ValueType] = {
    "float32": pb.DATA_TYPE_FLOAT32,
    "int64": pb.DATA_TYPE_INT64,
    "int32": pb.DATA_TYPE_INT32,
    "float64": pb.DATA_TYPE_FLOAT64,
}
_FORMATS: dict[OutputFormat, pb.OutputFormat.ValueType] = {
    OutputFormat.RAW: pb.OUTPUT_FORMAT_RAW,
    OutputFormat.PROBABILITIES: pb.OUTPUT_FORMAT_PROBABILITIES,
    OutputFormat.TOP_K: pb.OUTPUT_FORMAT_TOP_K,
    OutputFormat.NONE: pb.OUTPUT_FORMAT_NONE,
}
_STEPS: dict[OutputSteps, pb.OutputSteps.ValueType] = {
    OutputSteps.ALL: pb.OUTPUT_STEPS_ALL,
    OutputSteps.LAST: pb.OUTPUT_STEPS_LAST,
}
_FINISH: dict[int, FinishReason] = {
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_STOP: FinishReason.STOP,
}


def encode_tensor(array: npt.NDArray[np.generic]) -> pb.Tensor:
    """A dense array as a wire Tensor (raw little-endian bytes, row-major)."""
    wire = _WIRE_TYPES.get(array.dtype.name)
    if wire is None:
        raise TypeError(f"unsupported tensor dtype {array.dtype}; use float32 or int64")
    data = np.ascontiguousarray(array, dtype=_DTYPES[wire])
    return pb.Tensor(dtype=wire, shape=list(data.shape), raw_data=data.tobytes())


def decode_tensor(tensor: pb.Tensor) -> npt.NDArray[np.generic]:
    """A wire Tensor as a (writable, native byte order) numpy array."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"unsupported tensor dtype {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(tensor.raw_data):
        raise ValueError(
            f"tensor of shape {list(shape)} needs {expected} bytes, got {len(tensor.raw_data)}"
        )
    flat = np.frombuffer(tensor.raw_data, dtype=dtype)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def encode_input(data: InputLike, vocabulary: Vocabulary | None = None) -> pb.StepInput:
    """One message of input: text, token ids (ints) or feature frames (floats, ``[steps, width]``).

    Text the vocabulary can encode is sent as token ids; any other text goes to the server as
    text, which encodes it with the model's own rules (or names the offending position).
    """
    if isinstance(data, str):
        if vocabulary is not None and data and vocabulary.can_encode(data):
            return pb.StepInput(tokens=pb.TokenIds(ids=vocabulary.encode(data).tolist()))
        return pb.StepInput(text=data)
    if isinstance(data, bytes | bytearray):
        raise TypeError("input must be text (str), token ids or feature frames, not bytes")
    array = np.asarray(data)
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        if array.size == 0:  # an empty list: empty token ids, which the server refuses by name
            return pb.StepInput(tokens=pb.TokenIds())
        raise TypeError(f"input must be text, token ids or feature frames, not {array.dtype}")
    if array.dtype.kind in "iu":
        return pb.StepInput(tokens=pb.TokenIds(ids=array.reshape(-1).astype(np.int64).tolist()))
    return pb.StepInput(features=encode_tensor(array.astype(np.float32, copy=False)))


def output_options(
    output: OutputFormat | str = OutputFormat.RAW,
    steps: OutputSteps | str = OutputSteps.ALL,
    top_k: int = 5,
) -> OutputOptions:
    """Normalise the ``output=``/``steps=``/``top_k=`` arguments of the public calls."""
    return OutputOptions(format=OutputFormat(output), steps=OutputSteps(steps), top_k=top_k)


def encode_options(options: OutputOptions) -> pb.OutputOptions:
    """OutputOptions as the wire message."""
    return pb.OutputOptions(
        steps=_STEPS[options.steps], format=_FORMATS[options.format], top_k=options.top_k
    )


def _float_array(tensor: pb.Tensor) -> npt.NDArray[np.float32]:
    return decode_tensor(tensor).astype(np.float32, copy=False)


def decode_output(output: pb.Output) -> ModelOutput:
    """One wire Output as numpy arrays."""
    tensor = _float_array(output.tensor) if output.HasField("tensor") else None
    top_indices = top_probabilities = None
    top_labels: tuple[tuple[str, ...], ...] = ()
    if output.top_k:
        top_indices = np.array([list(entry.indices) for entry in output.top_k], dtype=np.int64)
        top_probabilities = np.array(
            [list(entry.probabilities) for entry in output.top_k], dtype=np.float32
        )
        if any(entry.labels for entry in output.top_k):
            top_labels = tuple(tuple(entry.labels) for entry in output.top_k)
    argmax = np.array(list(output.argmax), dtype=np.int64) if output.argmax else None
    return ModelOutput(
        name=output.name,
        meaning=output.meaning,
        tensor=tensor,
        argmax=argmax,
        labels=tuple(output.labels),
        top_k_indices=top_indices,
        top_k_probabilities=top_probabilities,
        top_k_labels=top_labels,
    )


def decode_result(result: pb.StepResult) -> StepOutput:
    """One wire StepResult as a StepOutput."""
    outputs = {output.name: decode_output(output) for output in result.outputs}
    return StepOutput(
        outputs=outputs,
        steps=result.steps,
        step_count=result.step_count,
        durable_step_count=_durable(result),
    )


def _durable(message: pb.StepResult | pb.SessionInfo) -> int | None:
    """The optional durable step count; None when the server left it unset (in-memory store, or
    a server that predates it)."""
    return message.durable_step_count if message.HasField("durable_step_count") else None


def decode_session(session: pb.SessionInfo) -> SessionInfo:
    """A wire SessionInfo as a SessionInfo."""
    return SessionInfo(
        session_id=session.session_id,
        model=session.model,
        version=session.version,
        step_count=session.step_count,
        created_at=session.created_at,
        expires_at=session.expires_at,
        state_bytes=session.state_bytes,
        durable_step_count=_durable(session),
    )


def decode_model(model: pb.ModelInfo) -> ModelInfo:
    """A wire ModelInfo as a ModelInfo (with its Vocabulary for token models)."""
    return ModelInfo(
        name=model.name,
        version=model.version,
        versions=tuple(model.versions),
        task=model.task,
        cell=model.cell,
        bidirectional=model.bidirectional,
        streamable=model.streamable,
        input_kind=model.input_kind,
        vocabulary=(
            Vocabulary(model.vocabulary, word_level=bool(model.tokenizer or model.token_pattern))
            if model.vocabulary
            else None
        ),
        feature_width=model.feature_width,
        outputs=tuple(
            OutputInfo(name=o.name, meaning=o.meaning, shape=tuple(o.shape), labels=tuple(o.labels))
            for o in model.outputs
        ),
        states=tuple(StateInfo(name=s.name, shape=tuple(s.shape)) for s in model.states),
        state_bytes=model.state_bytes,
        max_steps_per_message=model.max_steps_per_message,
        description=model.description,
        metrics=dict(model.metrics),
    )


def decode_token(response: pb.GenerateResponse) -> GeneratedToken:
    """One wire GenerateResponse as a GeneratedToken."""
    return GeneratedToken(
        session_id=response.session_id,
        token_id=response.token_id,
        text=response.text,
        index=response.index,
        step_count=response.step_count,
        finish_reason=_FINISH.get(response.finish_reason),
    )
