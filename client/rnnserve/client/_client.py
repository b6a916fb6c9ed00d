"""The synchronous client: models, sessions, generation and prediction over one channel."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from rnnserve.client._call_policy import CLIENT_ID_KEY
from rnnserve.client._client_core import ClientCore
from rnnserve.client._codec import decode_model, decode_result, decode_session, output_options
from rnnserve.client._credentials import channel_credentials, channel_options
from rnnserve.client._errors import RnnServeError
from rnnserve.client._requests import (
    aim_generation,
    generation_settings,
    model_ref,
    needs_vocabulary,
    predict_request,
)
from rnnserve.client._retry import RetryPolicy
from rnnserve.client._rpc import Rpc
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

__all__ = ["CLIENT_ID_KEY", "Client"]


class Client(ClientCore):
    """A synchronous rnnserve client.

    Args:
        target: the server address, e.g. ``"localhost:50051"``.
        client_id: identity sent as ``x-client-id``; sessions are bound to it (the server uses
            ``"anonymous"`` when it is absent). On a server with authentication it only names a
            sub-identity under the authenticated principal (``<principal>/<client_id>``).
        token: bearer token sent as ``authorization: Bearer <token>`` on every call, streams
            included, for servers started with an ``auth_tokens_file``.
        timeout: default deadline in seconds for each call (``None``: no deadline); every method
            takes its own ``timeout`` too. For streaming calls it bounds the whole call.
        retry: how idempotent calls are retried on UNAVAILABLE.
        tls: connect with TLS, trusting the system's root certificates (implied by ``tls_ca``
            and ``tls_cert``).
        tls_ca: PEM file of the CA(s) the server's certificate must chain to.
        tls_cert: PEM client certificate, for servers that require mutual TLS (with
            ``tls_key``, its private key).
        tls_key: PEM private key of ``tls_cert``.
        tls_server_name: the name to check the server's certificate against, when it differs
            from the host in ``target``.
        credentials: ready-made channel credentials (instead of the ``tls*`` options).
        options: extra gRPC channel options.
        channel: an existing channel to use instead (the client will not close it).

    Use as a context manager, or call :meth:`close`, to release the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        client_id: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        owns_channel = channel is None
        # Before the channel exists: a bad token must not leave an open channel behind.
        super().__init__(target, client_id, timeout, retry, owns_channel, token)
        if channel is None:
            if credentials is None:
                credentials = channel_credentials(
                    tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
                )
            settings = channel_options(list(options), tls_server_name)
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=settings)
            else:
                channel = grpc.insecure_channel(target, options=settings)
        self._channel = channel
        self._rpc = Rpc(channel, self._policy)

    # -- models ---------------------------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model (latest version of each) the server serves."""
        response = self._rpc.call(
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
        cached = self._cached_model(name, version, refresh)
        if cached is not None:
            return cached
        request = pb.GetModelRequest(model=model_ref(name, version))
        response = self._rpc.call("GetModel", request, timeout=timeout, idempotent=True)
        return self._remember_model(name, version, decode_model(response.model))

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
        request = pb.CreateSessionRequest(model=model_ref(model, version))
        response = self._rpc.call("CreateSession", request, timeout=timeout)
        return self._opened(decode_session(response.session), timeout)

    def _opened(self, info: SessionInfo, timeout: float | None) -> Session:
        """Wrap a session the server just opened; close it again if its model cannot be read."""
        try:
            model = self.model(info.model, info.version, timeout=timeout)
        except RnnServeError:
            with contextlib.suppress(RnnServeError):
                request = pb.CloseSessionRequest(session_id=info.session_id)
                self._rpc.for_session(info.session_id).call("CloseSession", request, timeout=1)
            raise
        return Session(self._rpc, info, model)

    def attach(self, session_id: str, *, timeout: float | None = None) -> Session:
        """A :class:`Session` for an existing session id (opened earlier by this identity)."""
        response = self._rpc.for_session(session_id).call(
            "GetSession",
            pb.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            idempotent=True,
        )
        info = decode_session(response.session)
        return Session(self._rpc, info, self.model(info.model, info.version, timeout=timeout))

    def restore(self, snapshot: bytes, *, timeout: float | None = None) -> Session:
        """Open a new session from snapshot bytes (from :meth:`Session.snapshot`, this or
        another server with the same model weights).

        Raises:
            InvalidArgument: the snapshot is corrupted, forged or for another model.
        """
        response = self._rpc.call(
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
        if needs_vocabulary(prompt):
            vocabulary = self.model(model, version, timeout=timeout).vocabulary
        settings = generation_settings(
            max_tokens, temperature, top_k, top_p, seed, stop, close_session=True
        )
        request = aim_generation(
            settings, model=model, version=version, prompt=prompt, vocabulary=vocabulary
        )
        return Generation(self._rpc, request, timeout)

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
        request = predict_request(model, version, sequences, options, info.vocabulary)
        response = self._rpc.call("Predict", request, timeout=timeout, idempotent=True)
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
