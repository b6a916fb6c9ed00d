"""The synchronous client: models, sessions, generation and prediction over one channel."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from rnnserve.client._codec import (
    decode_model,
    decode_result,
    decode_session,
    encode_input,
    encode_options,
    generate_request,
    output_options,
)
from rnnserve.client._errors import RnnServeError, convert_rpc_error
from rnnserve.client._retry import RetryPolicy
from rnnserve.client._session import Session
from rnnserve.client._streams import Generation
from rnnserve.client._types import (
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

CLIENT_ID_KEY = "x-client-id"


def call_metadata(client_id: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the client identity sessions are bound to."""
    return ((CLIENT_ID_KEY, client_id),) if client_id else ()


class Client:
    """A synchronous rnnserve client.

    Args:
        target: the server address, e.g. ``"localhost:50051"``.
        client_id: identity sent as ``x-client-id``; sessions are bound to it (the server uses
            ``"anonymous"`` when it is absent).
        timeout: default deadline in seconds for each call (``None``: no deadline); every method
            takes its own ``timeout`` too. For streaming calls it bounds the whole call.
        retry: how idempotent calls are retried on UNAVAILABLE.
        credentials: channel credentials for TLS (default: an insecure channel).
        options: extra gRPC channel options.
        channel: an existing channel to use instead (the client will not close it).

    Use as a context manager, or call :meth:`close`, to release the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        client_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.client_id = client_id
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=list(options))
            else:
                channel = grpc.insecure_channel(target, options=list(options))
        self._channel = channel
        self._stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        self._metadata = call_metadata(client_id)
        self._models: dict[tuple[str, int], ModelInfo] = {}
        self._models_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.target!r}, client_id={self.client_id!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _call(
        self, method: str, request: Any, *, timeout: float | None, idempotent: bool = False
    ) -> Any:
        """Run a unary call with the deadline, metadata and (if idempotent) retries."""
        callable_: Callable[..., Any] = getattr(self._stub, method)
        timeout = self._timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return callable_(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = convert_rpc_error(rpc_error)
            if not (idempotent and self.retry.should_retry(error.code, attempt)):
                raise error
            wait = self.retry.backoff(attempt)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise error
            time.sleep(wait)
            attempt += 1

    def _start_stream(
        self, timeout: float | None
    ) -> Callable[[Iterator[pb.StreamRequest]], Iterator[pb.StreamResponse]]:
        def start(requests: Iterator[pb.StreamRequest]) -> Iterator[pb.StreamResponse]:
            return self._stub.Stream(  # type: ignore[no-any-return]
                requests, timeout=self._timeout(timeout), metadata=self._metadata
            )

        return start

    def _start_generate(self, request: pb.GenerateRequest, timeout: float | None) -> Any:
        return self._stub.Generate(request, timeout=self._timeout(timeout), metadata=self._metadata)

    # -- models ---------------------------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model (latest version of each) the server serves."""
        response = self._call(
            "ListModels", pb.ListModelsRequest(), timeout=timeout, idempotent=True
        )
        return [decode_model(model) for model in response.models]

    def model(
        self, name: str, version: int = 0, *, refresh: bool = False, timeout: float | None = None
    ) -> ModelInfo:
        """Describe one model version (0: the latest): vocabulary, labels, input, outputs, state.

        Answers are cached per client; ``refresh=True`` asks the server again.

        Raises:
            NotFound: no such model or version.
        """
        key = (name, version)
        with self._models_lock:
            cached = self._models.get(key)
        if cached is not None and not refresh:
            return cached
        response = self._call(
            "GetModel",
            pb.GetModelRequest(model=pb.ModelRef(name=name, version=version)),
            timeout=timeout,
            idempotent=True,
        )
        info = decode_model(response.model)
        with self._models_lock:
            self._models[key] = info
            self._models[(info.name, info.version)] = info
        return info

    # -- sessions -------------------------------------------------------------------------------

    def session(self, model: str, version: int = 0, *, timeout: float | None = None) -> Session:
        """Open a session on a model version (0: the latest), with the model's initial state.

        Use it as a context manager so that it is closed on exit::

            with client.session("char-lstm") as s:
                out = s.feed("hello")

        Raises:
            NotFound: no such model or version.
            FailedPrecondition: the model is not streamable (bidirectional).
            ResourceExhausted: the server holds its maximum number of sessions.
        """
        response = self._call(
            "CreateSession",
            pb.CreateSessionRequest(model=pb.ModelRef(name=model, version=version)),
            timeout=timeout,
        )
        return self._opened(decode_session(response.session), timeout)

    def _opened(self, info: SessionInfo, timeout: float | None) -> Session:
        """Wrap a session the server just opened; close it again if its model cannot be read."""
        try:
            model = self.model(info.model, info.version, timeout=timeout)
        except RnnServeError:
            with contextlib.suppress(RnnServeError):
                self._call(
                    "CloseSession", pb.CloseSessionRequest(session_id=info.session_id), timeout=1
                )
            raise
        return Session(self, info, model)

    def attach(self, session_id: str, *, timeout: float | None = None) -> Session:
        """A :class:`Session` for an existing session id (opened earlier by this identity)."""
        response = self._call(
            "GetSession",
            pb.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            idempotent=True,
        )
        info = decode_session(response.session)
        return Session(self, info, self.model(info.model, info.version, timeout=timeout))

    def restore(self, snapshot: bytes, *, timeout: float | None = None) -> Session:
        """Open a new session from snapshot bytes (from :meth:`Session.snapshot`, this or
        another server with the same model weights).

        Raises:
            InvalidArgument: the snapshot is corrupted, forged or for another model.
        """
        response = self._call(
            "ImportState", pb.ImportStateRequest(snapshot=snapshot), timeout=timeout
        )
        return self._opened(decode_session(response.session), timeout)

    # -- one-shot calls -------------------------------------------------------------------------

    def generate(
        self,
        model: str,
        prompt: InputLike | None = None,
        *,
        version: int = 0,
        max_tokens: int,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Generation:
        """Sample text from a language model on a fresh session that closes when it ends.

        Iterate the result for text pieces as the server produces them::

            for piece in client.generate("char-lstm", "Once ", max_tokens=100, seed=1):
                print(piece, end="", flush=True)

        See :meth:`Session.generate` for the sampling arguments.
        """
        vocabulary = None
        if isinstance(prompt, str) and prompt:
            vocabulary = self.model(model, version, timeout=timeout).vocabulary
        request = generate_request(
            model=model,
            version=version,
            prompt=prompt,
            vocabulary=vocabulary,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            close_session=True,
        )
        return Generation(self._start_generate(request, timeout))

    def predict(
        self,
        model: str,
        sequences: Sequence[InputLike],
        *,
        version: int = 0,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
        timeout: float | None = None,
    ) -> list[StepOutput]:
        """Stateless whole-sequence inference: one :class:`StepOutput` per sequence, in order.

        Each sequence (token ids, text or feature frames) runs from the initial state; they may
        differ in length. The only mode for bidirectional models. Being stateless, it is retried
        on UNAVAILABLE.
        """
        info = self.model(model, version, timeout=timeout)
        options = output_options(output, steps, top_k)
        request = pb.PredictRequest(
            model=pb.ModelRef(name=model, version=version),
            sequences=[encode_input(sequence, info.vocabulary) for sequence in sequences],
            output=encode_options(options),
        )
        response = self._call("Predict", request, timeout=timeout, idempotent=True)
        return [decode_result(result) for result in response.results]

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (if this client made it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
