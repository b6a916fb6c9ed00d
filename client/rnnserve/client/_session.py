"""A synchronous session: one model version's hidden state kept on the server between calls."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rnnserve.client._codec import output_options
from rnnserve.client._connection import SessionStream
from rnnserve.client._errors import NotFound, RnnServeError
from rnnserve.client._requests import generation_settings
from rnnserve.client._rpc import Rpc
from rnnserve.client._session_core import SessionCore
from rnnserve.client._streams import Generation, OutputStream
from rnnserve.client._types import (
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.v1 import rnnserve_pb2 as pb


class Session(SessionCore):
    """A session on one model version; the server keeps its hidden state between calls.

    Get one from :meth:`Client.session`, :meth:`Client.attach` or :meth:`Client.restore`, and
    use it as a context manager so that it is closed on exit. Each :meth:`feed` carries the
    session's expected step count, so the server refuses a duplicated or out-of-order step and a
    retried step can never apply twice. A session object is not thread-safe.
    """

    def __init__(self, rpc: Rpc, info: SessionInfo, model: ModelInfo) -> None:
        super().__init__(info, model)
        # Every call of the session names it, so a proxy routes it to the process holding it.
        self._rpc = rpc.for_session(info.session_id)

    def __repr__(self) -> str:
        return f"Session({self.session_id!r}, model={self._model.name!r} v{self._model.version})"

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
        if self._step_count is None:
            self.describe(timeout=timeout)
        request = self._step_request(data, options)
        try:
            response = self._rpc.call("Step", request, timeout=timeout, idempotent=True)
        except RnnServeError as error:
            if not self._may_have_failed_over(error):
                self._step_failed(error)
                raise
            response = self._recover(request, error, timeout)
        return self._stepped(response, request)

    def _recover(
        self, request: pb.StepRequest, error: RnnServeError, timeout: float | None
    ) -> pb.StepResponse:
        """The session's process died and the state tier lets another take it over: wait for
        the move, replay the inputs kept since the durable step count (where the survivor
        starts), then send the step again, so its outputs are those an uninterrupted run gives."""
        started, attempt = time.monotonic(), 0
        while True:
            try:
                described = self._rpc.call(
                    "GetSession",
                    pb.GetSessionRequest(session_id=self.session_id),
                    timeout=timeout,
                    idempotent=True,
                )
                for replay in self._replays(request, described.session.step_count, error):
                    self._rpc.call("Step", replay, timeout=timeout, idempotent=True)
                response: pb.StepResponse = self._rpc.call(
                    "Step", request, timeout=timeout, idempotent=True
                )
                return response
            except RnnServeError as failure:
                time.sleep(self._failover_wait(failure, attempt, started))
                attempt += 1

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """An idempotent call of this session, retried on UNAVAILABLE; while the server reports
        durability, a failover in progress is waited out (see ``FAILOVER_WAIT_S``)."""
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return self._rpc.call(method, request, timeout=timeout, idempotent=True)
            except RnnServeError as failure:
                time.sleep(self._session_call_wait(failure, attempt, started))
                attempt += 1

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
        self._stepping_out_of_sight()
        return OutputStream(
            self._rpc,
            timeout,
            self.session_id,
            inputs,
            options,
            self._model.vocabulary,
            on_output=self._track_output,
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
        return SessionStream(
            self._rpc,
            timeout,
            self.session_id,
            self._model.vocabulary,
            on_step_count=self._track_step_count,
            durable=self._replay.tracking,
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
        settings = generation_settings(max_tokens, temperature, top_k, top_p, seed, stop)
        request = self._generate_request(prompt, settings)
        self._stepping_out_of_sight()
        return Generation(self._rpc, request, timeout, on_finish=self._track_generation)

    def describe(self, *, timeout: float | None = None) -> SessionInfo:
        """Ask the server for the session's current description (step count, expiry)."""
        request = pb.GetSessionRequest(session_id=self.session_id)
        response = self._call("GetSession", request, timeout)
        return self._described(response.session)

    def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Set the state back to the model's initial state (step count 0)."""
        response = self._rpc.call(
            "ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout=timeout
        )
        return self._described(response.session)

    def snapshot(self, *, timeout: float | None = None) -> bytes:
        """Export the state as integrity-checked snapshot bytes (see :meth:`Client.restore`)."""
        request = pb.ExportStateRequest(session_id=self.session_id)
        response = self._call("ExportState", request, timeout)
        self._described(response.session)
        return bytes(response.snapshot)

    def close(self, *, timeout: float | None = None) -> None:
        """Close the session and free its state on the server (closing twice is harmless)."""
        if self._closed:
            return
        self._closed = True
        # Already gone (expired, evicted or closed) means nothing is left to free.
        with contextlib.suppress(NotFound):
            request = pb.CloseSessionRequest(session_id=self.session_id)
            # Idempotent in effect: a close that ran twice finds the session gone (NotFound).
            self._call("CloseSession", request, timeout)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
