"""Proto <-> domain conversion for rnnserve.v1, validating the proto-level shape with field paths.

Only what the proto alone can tell is checked here (a oneof left unset, a tensor's dtype, rank and
byte length, a negative version) and the request caps (transport/limits.py: steps, text bytes,
ids, stop strings), each from the sizes the message states before anything is copied or encoded;
what needs the model (vocabulary range, feature width, NaN) is the core's job and comes back as
InvalidInput with a path relative to the input.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import (
    FinishReason,
    GeneratedToken,
    GenerationRequest,
    InputData,
    ModelDescription,
    OutputFormat,
    OutputOptions,
    OutputResult,
    OutputSteps,
    SamplingParams,
    SessionView,
    StepOutcome,
)
from rnnserve.server.errors import InvalidInput
from rnnserve.server.transport.limits import (
    DEFAULT_LIMITS,
    RequestLimits,
    check_count,
    check_id,
    check_shape,
    check_steps,
    check_text,
)
from rnnserve.v1 import rnnserve_pb2 as pb

_LITTLE_ENDIAN = sys.byteorder == "little"  # float32 raw_data is little-endian on the wire

DEFAULT_TOP_K = 5
# Wire dtype -> (numpy little-endian dtype, name used in messages).
_WIRE_DTYPES: dict[int, np.dtype[np.generic]] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
_OUTPUT_STEPS = {
    pb.OUTPUT_STEPS_UNSPECIFIED: OutputSteps.ALL,
    pb.OUTPUT_STEPS_ALL: OutputSteps.ALL,
    pb.OUTPUT_STEPS_LAST: OutputSteps.LAST,
}
_OUTPUT_FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.RAW,
    pb.OUTPUT_FORMAT_RAW: OutputFormat.RAW,
    pb.OUTPUT_FORMAT_PROBABILITIES: OutputFormat.PROBABILITIES,
    pb.OUTPUT_FORMAT_TOP_K: OutputFormat.TOP_K,
    pb.OUTPUT_FORMAT_NONE: OutputFormat.NONE,
}
_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
}


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _dtype_name(value: int) -> str:
    try:
        return str(pb.DataType.Name(value))  # type: ignore[arg-type]
    except ValueError:
        return str(value)


# ---- requests -> domain ------------------------------------------------------------------------


def decode_session_id(
    session_id: str, field: str = "session_id", limits: RequestLimits = DEFAULT_LIMITS
) -> str:
    """A session id the client must give; empty or over-long is refused before the core."""
    if not session_id:
        raise InvalidInput("a session id is required", field=field)
    check_id(session_id, field, limits)
    return session_id


def decode_model_ref(
    ref: pb.ModelRef, field: str = "model", limits: RequestLimits = DEFAULT_LIMITS
) -> tuple[str, int]:
    """(name, version) of a ModelRef; version 0 means the latest."""
    if not ref.name:
        raise InvalidInput("a model name is required", field=_path(field, "name"))
    check_id(ref.name, _path(field, "name"), limits)
    if ref.version < 0:
        raise InvalidInput(
            f"must be >= 0 (0 = latest), got {ref.version}", field=_path(field, "version")
        )
    return ref.name, int(ref.version)


def decode_features(
    tensor: pb.Tensor, field: str, limits: RequestLimits = DEFAULT_LIMITS
) -> npt.NDArray[np.float32]:
    """A `[steps, width]` float32 tensor from raw little-endian bytes.

    The declared shape is checked (rank, each dimension, steps against max_steps_per_message,
    the byte count) before a byte is copied.
    """
    if tensor.dtype != pb.DATA_TYPE_FLOAT32:
        raise InvalidInput(
            f"expected DATA_TYPE_FLOAT32, got {_dtype_name(tensor.dtype)}",
            field=_path(field, "dtype"),
        )
    shape = tensor.shape
    if len(shape) != 2 or shape[0] < 0 or shape[1] < 0:
        got = _shape_text(shape) if len(shape) == 2 else f"rank {len(shape)}"
        raise InvalidInput(f"expected [steps, width], got {got}", field=_path(field, "shape"))
    expected = check_shape(shape, 4, _path(field, "shape"), limits) * 4
    check_steps(shape[0], _path(field, "shape[0]"), limits)
    if len(tensor.raw_data) != expected:
        raise InvalidInput(
            f"expected {expected} bytes for float32 {_shape_text(shape)}, "
            f"got {len(tensor.raw_data)}",
            field=_path(field, "raw_data"),
        )
    # astype copies into a writable, native-order array the core may keep.
    array = np.frombuffer(tensor.raw_data, dtype="<f4").reshape(shape[0], shape[1])
    return array.astype(np.float32)


def decode_input(
    message: pb.StepInput, field: str, limits: RequestLimits = DEFAULT_LIMITS
) -> InputData:
    """Token ids (int64 [steps]), feature frames (float32 [steps, width]) or text."""
    kind = message.WhichOneof("data")
    if kind is None:
        raise InvalidInput("one of tokens, features or text must be set", field=field)
    if kind == "tokens":
        ids = message.tokens.ids
        check_steps(len(ids), _path(field, "tokens.ids"), limits)
        # fromiter: np.array() first probes the container for the buffer and array protocols
        # (~2 us a message for one token); the ids are int64 already
        return np.fromiter(ids, dtype=np.int64, count=len(ids))
    if kind == "features":
        return decode_features(message.features, _path(field, "features"), limits)
    text = message.text
    check_text(text, _path(field, "text"), limits)
    return text


def decode_expected_step_count(request: pb.StepRequest | pb.StreamRequest) -> int | None:
    """The step count a step message is guarded by, if it sets one (an optional field)."""
    return request.expected_step_count if request.HasField("expected_step_count") else None


def input_size(message: pb.StepInput) -> tuple[int, int]:
    """(steps, text characters) a StepInput states, read without decoding it: token ids and
    feature rows count as steps (a negative row count as none: decoding refuses it), text as
    characters (its steps are known only once the model's codec has read it)."""
    kind = message.WhichOneof("data")
    if kind == "tokens":
        return len(message.tokens.ids), 0
    if kind == "features":
        shape = message.features.shape
        return (max(0, int(shape[0])) if shape else 0), 0
    if kind == "text":
        return 0, len(message.text)
    return 0, 0


def check_predict(sequences: Sequence[pb.StepInput], limits: RequestLimits) -> int:
    """A Predict's caps, before any sequence is decoded: at most max_predict_sequences
    sequences, whose steps together stay within max_steps_per_message and whose text within
    max_text_bytes (a Predict is held to one message's caps). Returns the total steps stated."""
    if not sequences:
        raise InvalidInput("at least one sequence is required", field="sequences")
    check_count(
        len(sequences),
        limits.max_predict_sequences,
        "sequences",
        "sequences",
        "max_predict_sequences",
    )
    steps, characters = 0, 0
    for sequence in sequences:
        sequence_steps, sequence_characters = input_size(sequence)
        steps += sequence_steps
        characters += sequence_characters
    check_count(
        steps, limits.max_steps_per_message, "sequences", "steps in all", "max_steps_per_message"
    )
    if characters > limits.max_text_bytes:  # one byte per character at least
        raise InvalidInput(
            f"text of at least {characters:,} UTF-8 bytes in all exceeds max_text_bytes "
            f"{limits.max_text_bytes:,}; split the request",
            field="sequences",
        )
    return steps


def decode_sequences(
    sequences: Sequence[pb.StepInput], limits: RequestLimits = DEFAULT_LIMITS
) -> list[InputData]:
    """A Predict's sequences (checked with `check_predict` first), fields `sequences[i]...`."""
    return [
        decode_input(sequence, f"sequences[{i}]", limits) for i, sequence in enumerate(sequences)
    ]


# OutputOptions is frozen: the few combinations clients send are decoded once (every message
# carries one).
_DECODED_OPTIONS: dict[tuple[int, int, int], OutputOptions] = {}


def decode_output_options(message: pb.OutputOptions, field: str = "output") -> OutputOptions:
    """What a reply carries; unset enums mean all steps, raw outputs; top_k 0 means 5."""
    key = (message.steps, message.format, message.top_k)
    options = _DECODED_OPTIONS.get(key)
    if options is None:
        options = _decode_output_options(message, field)
        if len(_DECODED_OPTIONS) < 1024:  # a client cycling through top_k values stays bounded
            _DECODED_OPTIONS[key] = options
    return options


def _decode_output_options(message: pb.OutputOptions, field: str) -> OutputOptions:
    steps = _OUTPUT_STEPS.get(message.steps)
    if steps is None:
        raise InvalidInput(
            f"unknown OutputSteps value {message.steps}", field=_path(field, "steps")
        )
    output_format = _OUTPUT_FORMATS.get(message.format)
    if output_format is None:
        raise InvalidInput(
            f"unknown OutputFormat value {message.format}", field=_path(field, "format")
        )
    return OutputOptions(
        steps=steps, format=output_format, top_k=int(message.top_k) or DEFAULT_TOP_K
    )


def decode_sampling(message: pb.SamplingParams, field: str = "sampling") -> SamplingParams:
    """Sampling settings; temperature defaults to 1.0, top_p 0 means no limit."""
    temperature = message.temperature if message.HasField("temperature") else 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(
            f"must be a finite number >= 0, got {temperature}", field=_path(field, "temperature")
        )
    top_p = float(message.top_p)
    if not math.isfinite(top_p) or not 0.0 <= top_p <= 1.0:
        raise InvalidInput(f"must be in [0, 1], got {top_p}", field=_path(field, "top_p"))
    return SamplingParams(
        temperature=float(temperature),
        top_k=int(message.top_k),
        top_p=top_p if top_p > 0 else 1.0,
        seed=int(message.seed) if message.HasField("seed") else None,
    )


def decode_stops(stops: Sequence[str], limits: RequestLimits) -> tuple[str, ...]:
    """Generate's stop strings: at most max_stop_strings, each of at most max_stop_string_bytes
    UTF-8 bytes (counted before any is copied)."""
    check_count(len(stops), limits.max_stop_strings, "stop", "stop strings", "max_stop_strings")
    for index, stop in enumerate(stops):
        if len(stop) * 4 > limits.max_stop_string_bytes:
            size = len(stop.encode("utf-8", "surrogatepass"))
            if size > limits.max_stop_string_bytes:
                raise InvalidInput(
                    f"{size:,} UTF-8 bytes exceed max_stop_string_bytes "
                    f"{limits.max_stop_string_bytes}",
                    field=f"stop[{index}]",
                )
    return tuple(stops)


def decode_generation(
    request: pb.GenerateRequest, limits: RequestLimits = DEFAULT_LIMITS
) -> GenerationRequest:
    """A GenerateRequest as the core's GenerationRequest; every cap checked first."""
    target = request.WhichOneof("target")
    if target is None:
        raise InvalidInput("one of model or session_id must be set", field="target")
    model, version, session_id = None, 0, None
    if target == "model":
        model, version = decode_model_ref(request.model, limits=limits)
    else:
        session_id = decode_session_id(request.session_id, limits=limits)
    if request.max_tokens == 0:
        raise InvalidInput("must be > 0", field="max_tokens")
    if request.max_tokens > limits.max_generate_tokens:
        raise InvalidInput(
            f"{request.max_tokens:,} exceeds max_generate_tokens {limits.max_generate_tokens:,}",
            field="max_tokens",
        )
    if request.close_session and target != "model":
        raise InvalidInput(
            "close_session applies only to a new session (model)", field="close_session"
        )
    stop = decode_stops(request.stop, limits)
    sampling = decode_sampling(request.sampling)
    prompt: InputData | None = None
    kind = request.WhichOneof("prompt")
    if kind == "text":
        check_text(request.text, "text", limits)
        prompt = request.text
    elif kind == "tokens":
        check_steps(len(request.tokens.ids), "tokens.ids", limits)
        prompt = np.array(request.tokens.ids, dtype=np.int64)
    return GenerationRequest(
        model=model,
        version=version,
        session_id=session_id,
        prompt=prompt,
        sampling=sampling,
        max_tokens=int(request.max_tokens),
        stop=stop,
        close_session=request.close_session,
    )


# ---- domain -> responses -----------------------------------------------------------------------


def encode_tensor(array: npt.NDArray[np.generic]) -> pb.Tensor:
    """A float32/int64/int32/float64 array as a raw little-endian Tensor."""
    for wire, dtype in _WIRE_DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            data = np.ascontiguousarray(array, dtype=dtype).tobytes()
            return pb.Tensor(dtype=wire, shape=list(array.shape), raw_data=data)  # type: ignore[arg-type]
    raise TypeError(f"no wire dtype for {array.dtype}")


def decode_tensor(tensor: pb.Tensor) -> npt.NDArray[np.generic]:
    """The inverse of encode_tensor (for clients and tests); the tensor must be well formed."""
    dtype = _WIRE_DTYPES[tensor.dtype]
    return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(list(tensor.shape))


def encode_session(view: SessionView) -> pb.SessionInfo:
    """A session's public description."""
    return pb.SessionInfo(
        session_id=view.session_id,
        model=view.model,
        version=view.version,
        step_count=view.step_count,
        created_at=view.created_at,
        expires_at=view.expires_at,
        state_bytes=view.state_bytes,
        durable_step_count=view.durable_step_count,
    )


def fill_output(output: pb.Output, result: OutputResult) -> None:
    """Write one model output into `output` in place (building sub-messages and copying them
    in would copy every tensor's bytes once more)."""
    output.name = result.name
    output.meaning = result.meaning
    if result.tensor is not None:
        fill_tensor(output.tensor, result.tensor)
    if result.top_k_indices is not None and result.top_k_probabilities is not None:
        labels = result.top_k_labels or [[] for _ in range(len(result.top_k_indices))]
        for indices, probabilities, names in zip(
            result.top_k_indices.tolist(), result.top_k_probabilities.tolist(), labels, strict=True
        ):
            output.top_k.add(indices=indices, probabilities=probabilities, labels=names)
    if result.argmax is not None:
        output.argmax.extend(result.argmax.tolist())
    if result.labels is not None:
        output.labels.extend(result.labels)


def fill_tensor(tensor: pb.Tensor, array: npt.NDArray[np.generic]) -> None:
    """Write an array into `tensor` in place (as encode_tensor)."""
    if array.dtype == np.float32:  # the common case: model outputs
        tensor.dtype = pb.DATA_TYPE_FLOAT32
        # tobytes() writes C order whatever the layout; only the byte order may need a cast
        tensor.raw_data = (array if _LITTLE_ENDIAN else array.astype("<f4")).tobytes()
    else:
        encoded = encode_tensor(array)
        tensor.dtype, tensor.raw_data = encoded.dtype, encoded.raw_data
    tensor.shape.extend(array.shape)


def encode_step(outcome: StepOutcome) -> pb.StepResult:
    """The result of one message of input."""
    result = pb.StepResult()
    fill_step(result, outcome)
    return result


def fill_step(result: pb.StepResult, outcome: StepOutcome) -> None:
    """Write the result of one message of input into `result` in place (e.g. a response's
    `result` field, so that nothing is built twice)."""
    for output in outcome.outputs:
        fill_output(result.outputs.add(), output)
    result.steps = outcome.steps
    result.step_count = outcome.step_count
    if outcome.durable_step_count is not None:
        result.durable_step_count = outcome.durable_step_count


def fill_predict(response: pb.PredictResponse, outcomes: Sequence[StepOutcome]) -> None:
    """Write a Predict's results into `response` in place, one per sequence, in order."""
    for outcome in outcomes:
        fill_step(response.results.add(), outcome)


def encode_token(token: GeneratedToken) -> pb.GenerateResponse:
    """One generated token."""
    return pb.GenerateResponse(
        session_id=token.session_id,
        token_id=token.token_id,
        text=token.text,
        index=token.index,
        finish_reason=_FINISH_REASONS[token.finish_reason],
        step_count=token.step_count,
    )


def encode_model(description: ModelDescription) -> pb.ModelInfo:
    """Everything a client needs to use a model version."""
    manifest = description.manifest
    info = pb.ModelInfo(
        name=manifest.name,
        version=description.version,
        versions=sorted(description.versions),
        task=manifest.task,
        cell=manifest.cell,
        bidirectional=manifest.bidirectional,
        streamable=manifest.streamable,
        input_kind=manifest.input.kind,
        outputs=[
            pb.OutputInfo(name=o.name, meaning=o.meaning, shape=o.shape, labels=o.labels or [])
            for o in manifest.outputs
        ],
        states=[pb.StateInfo(name=s.input_name, shape=s.shape) for s in manifest.states],
        state_bytes=description.state_bytes,
        max_steps_per_message=description.max_steps_per_message,
        description=manifest.description,
    )
    if manifest.input.kind == "tokens":
        info.vocabulary.extend(manifest.input.vocabulary)
        info.token_pattern = manifest.input.token_pattern or ""
        info.lowercase = manifest.input.lowercase
        info.tokenizer = manifest.input.tokenizer or ""
    else:
        info.feature_width = manifest.input.width
    try:
        metrics = manifest.version_info(description.version).metrics
    except KeyError:
        metrics = {}
    for key, value in metrics.items():
        info.metrics[key] = value
    return info
