"""A synchronous session: one model version's hidden state kept on the server between calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import grpc
from rnnserve.client._codec import (
    decode_result,
    decode_session,
    encode_input,
    encode_options,
    generate_request,
    output_options,
)
from rnnserve.client._connection import SessionStream
from rnnserve.client._errors import NotFound, RnnServeError
from rnnserve.client._streams import Generation, OutputStream
from rnnserve.client._types import (
    GeneratedToken,
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.v1 import rnnserve_pb2 as pb

if TYPE_CHECKING:
    from rnnserve.client._client import Client

# After these failures a step may or may not have run, so the step count must be asked again.
UNCERTAIN_CODES = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)


class Session:
    """A session on one model version; the server keeps its hidden state between calls.

    Get one from :meth:`Client.session`, :meth:`Client.attach` or :meth:`Client.restore`, and
    use it as a context manager so that it is closed on exit. Each :meth:`feed` carries the
    session's expected step count, so the server refuses a duplicated or out-of-order step and a
    retried step can never apply twice. A session object is not thread-safe.
    """

    def __init__(self, client: Client, info: SessionInfo, model: ModelInfo) -> None:
        self._client = client
        self._info = info
        self._model = model
        self._step_count: int | None = info.step_count
        self._closed = False

    @property
    def session_id(self) -> str:
        """The server-made session id."""
        return self._info.session_id

    @property
    def model(self) -> ModelInfo:
        """The model version this session is bound to."""
        return self._model

    @property
    def info(self) -> SessionInfo:
        """The session as last described by the server (see :meth:`describe` to refresh)."""
        return self._info

    @property
    def step_count(self) -> int | None:
        """Steps consumed since opened or last reset, as last known (``None`` if uncertain)."""
        return self._step_count

    def __repr__(self) -> str:
        return f"Session({self.session_id!r}, model={self._model.name!r} v{self._model.version})"

    def _expected_step_count(self, timeout: float | None) -> int:
        if self._step_count is None:
            self.describe(timeout=timeout)
        assert self._step_count is not None
        return self._step_count

    def _track(self, error: RnnServeError) -> None:
        if error.code in UNCERTAIN_CODES:
            self._step_count = None

    def feed(
        self,
        data: InputLike,
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
        timeout: float | None = None,
    ) -> StepOutput:
        """Feed one message of input (one or more steps) and return its outputs.

        Args:
            data: token ids (ints), text (encoded with the model's vocabulary) or feature
                frames ``[steps, width]`` (floats).
            output: ``"raw"``, ``"probabilities"``, ``"top_k"`` or ``"none"``.
            steps: ``"all"`` for one row per step, ``"last"`` for the last step only.
            top_k: k for the ``"top_k"`` format.
            timeout: seconds for this call (default: the client's timeout).

        Raises:
            InvalidArgument: the input is malformed (``field`` names where); state unchanged.
            NotFound: the session expired, was evicted or closed.
            Aborted: another step of this session ran meanwhile.
        """
        options = output_options(output, steps, top_k)
        expected = self._expected_step_count(timeout)
        request = pb.StepRequest(
            session_id=self.session_id,
            input=encode_input(data, self._model.vocabulary),
            output=encode_options(options),
            expected_step_count=expected,
        )
        try:
            response = self._client._call("Step", request, timeout=timeout, idempotent=True)
        except RnnServeError as error:
            self._track(error)
            raise
        result = decode_result(response.result)
        self._step_count = result.step_count
        return result

    def stream(
        self,
        inputs: Iterable[InputLike],
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
        timeout: float | None = None,
    ) -> OutputStream:
        """Stream inputs over one bidirectional call; iterate the result for one output each.

        Inputs are sent as ``inputs`` yields them, without waiting for replies, so a generator
        can produce them live. A refused input raises its error from ``next()`` and the stream
        carries on (see :class:`OutputStream`). ``timeout`` bounds the whole call.
        """
        options = output_options(output, steps, top_k)
        open_request = pb.StreamRequest(
            request_id="open", open=pb.OpenSession(session_id=self.session_id)
        )
        # The step count is only certain again once the stream ends cleanly.
        self._step_count = None

        def track(result: StepOutput | None) -> None:
            self._step_count = result.step_count if result is not None else None

        return OutputStream(
            self._client._start_stream(timeout),
            open_request,
            inputs,
            options,
            self._model.vocabulary,
            on_output=track,
        )

    def open_stream(self, *, timeout: float | None = None) -> SessionStream:
        """Open one ``Stream`` call for request/reply feeding: ``stream.feed(x)`` sends one
        message and returns its outputs, at a lower cost per message than :meth:`feed`::

            with session.open_stream() as stream:
                out = stream.feed("a")
                while out.labels[-1] != ".":
                    out = stream.feed(out.labels[-1])

        ``timeout`` bounds the whole call. Close it (or leave the ``with`` block) to end the
        call; the session stays open.
        """

        def track(step_count: int | None) -> None:
            self._step_count = step_count

        return SessionStream(
            self._client._start_stream(timeout),
            self.session_id,
            self._model.vocabulary,
            on_step_count=track,
        )

    def generate(
        self,
        prompt: InputLike | None = None,
        *,
        max_tokens: int,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Generation:
        """Sample from this session's language model, continuing from its state.

        The state advances by the prompt and the generated tokens, so feeds and generations can
        alternate (a dialogue). Iterate the result for text pieces as they are produced.

        Args:
            prompt: optional text or token ids fed before sampling.
            max_tokens: most tokens to generate.
            temperature: softmax temperature; 0 is greedy (server default 1.0).
            top_k: keep only the k most probable tokens (0: no limit).
            top_p: nucleus sampling threshold (0 or 1: no limit).
            seed: same seed, prompt and state give the same text.
            stop: generation ends after any of these strings (included in the text).
            timeout: seconds for the whole generation.
        """
        request = generate_request(
            session_id=self.session_id,
            prompt=prompt,
            vocabulary=self._model.vocabulary,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        self._step_count = None

        def finished(last: GeneratedToken | None) -> None:
            self._step_count = last.step_count if last is not None else None

        return Generation(self._client._start_generate(request, timeout), on_finish=finished)

    def describe(self, *, timeout: float | None = None) -> SessionInfo:
        """Ask the server for the session's current description (step count, expiry)."""
        response = self._client._call(
            "GetSession",
            pb.GetSessionRequest(session_id=self.session_id),
            timeout=timeout,
            idempotent=True,
        )
        self._info = decode_session(response.session)
        self._step_count = self._info.step_count
        return self._info

    def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Set the state back to the model's initial state (step count 0)."""
        response = self._client._call(
            "ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout=timeout
        )
        self._info = decode_session(response.session)
        self._step_count = self._info.step_count
        return self._info

    def snapshot(self, *, timeout: float | None = None) -> bytes:
        """Export the state as integrity-checked snapshot bytes (see :meth:`Client.restore`)."""
        response = self._client._call(
            "ExportState",
            pb.ExportStateRequest(session_id=self.session_id),
            timeout=timeout,
            idempotent=True,
        )
        self._info = decode_session(response.session)
        self._step_count = self._info.step_count
        return bytes(response.snapshot)

    def close(self, *, timeout: float | None = None) -> None:
        """Close the session and free its state on the server (closing twice is harmless)."""
        if self._closed:
            return
        self._closed = True
        # Already gone (expired, evicted or closed) means nothing is left to free.
        with contextlib.suppress(NotFound):
            self._client._call(
                "CloseSession", pb.CloseSessionRequest(session_id=self.session_id), timeout=timeout
            )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
