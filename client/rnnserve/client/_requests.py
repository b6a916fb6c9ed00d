"""Builds the requests the client sends; pure functions that change no session's state."""

from __future__ import annotations

from collections.abc import Sequence

from rnnserve.client._codec import encode_input, encode_options, output_options
from rnnserve.client._types import InputLike, OutputFormat, OutputOptions, OutputSteps
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb


def model_ref(name: str, version: int) -> pb.ModelRef:
    """A model version reference (version 0: the latest)."""
    return pb.ModelRef(name=name, version=version)


def predict_request(
    model: str,
    version: int,
    sequences: Sequence[InputLike],
    options: OutputOptions,
    vocabulary: Vocabulary | None,
) -> pb.PredictRequest:
    """Stateless inference of whole sequences."""
    return pb.PredictRequest(
        model=model_ref(model, version),
        sequences=[encode_input(sequence, vocabulary) for sequence in sequences],
        output=encode_options(options),
    )


def step_request(
    session_id: str,
    expected_step_count: int,
    data: InputLike,
    vocabulary: Vocabulary | None,
    options: OutputOptions,
) -> pb.StepRequest:
    """A unary Step carrying the step count the session is expected to be at."""
    return pb.StepRequest(
        session_id=session_id,
        input=encode_input(data, vocabulary),
        output=encode_options(options),
        expected_step_count=expected_step_count,
    )


def stream_open_request(session_id: str) -> pb.StreamRequest:
    """The first message of a Stream call that binds it to an existing session."""
    return pb.StreamRequest(request_id="open", open=pb.OpenSession(session_id=session_id))


def stream_step_request(
    data: InputLike,
    vocabulary: Vocabulary | None,
    output: OutputFormat | str,
    steps: OutputSteps | str,
    top_k: int,
) -> pb.StreamRequest:
    """One input of a Stream call (the caller numbers it)."""
    options = encode_options(output_options(output, steps, top_k))
    return pb.StreamRequest(step=encode_input(data, vocabulary), output=options)


def needs_vocabulary(prompt: InputLike | None) -> bool:
    """Whether a one-shot prompt is text, which the model's vocabulary may encode."""
    return isinstance(prompt, str) and bool(prompt)


def sampling_params(
    temperature: float | None = None,
    top_k: int = 0,
    top_p: float = 0.0,
    seed: int | None = None,
) -> pb.SamplingParams:
    """Sampling settings as the wire message (unset temperature means the server's 1.0)."""
    params = pb.SamplingParams(top_k=top_k, top_p=top_p)
    if temperature is not None:
        params.temperature = temperature
    if seed is not None:
        params.seed = seed
    return params


def generation_settings(
    max_tokens: int,
    temperature: float | None = None,
    top_k: int = 0,
    top_p: float = 0.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    close_session: bool = False,
) -> pb.GenerateRequest:
    """A GenerateRequest with its sampling settings only (see :func:`aim_generation`)."""
    return pb.GenerateRequest(
        sampling=sampling_params(temperature, top_k, top_p, seed),
        max_tokens=max_tokens,
        stop=list(stop),
        close_session=close_session,
    )


def aim_generation(
    request: pb.GenerateRequest,
    *,
    model: str | None = None,
    version: int = 0,
    session_id: str | None = None,
    prompt: InputLike | None = None,
    vocabulary: Vocabulary | None = None,
) -> pb.GenerateRequest:
    """Point a generation at a new session (``model``) or an existing one (``session_id``) and
    give it its prompt; returns ``request``, filled in."""
    if session_id is not None:
        request.session_id = session_id
    elif model is not None:
        request.model.CopyFrom(model_ref(model, version))
    else:
        raise ValueError("generate needs a model or a session id")
    if prompt is not None and (not isinstance(prompt, str) or prompt):
        step_input = encode_input(prompt, vocabulary)
        if step_input.HasField("text"):
            request.text = step_input.text
        elif step_input.HasField("tokens"):
            request.tokens.CopyFrom(step_input.tokens)
        else:
            raise TypeError("a generation prompt must be text or token ids")
    return request
