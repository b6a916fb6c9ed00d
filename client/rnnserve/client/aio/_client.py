"""The asyncio client: the same methods as Client, awaitable, over a grpc.aio channel."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
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
from rnnserve.client._types import (
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputSteps,
    StepOutput,
)
from rnnserve.client.aio._rpc import AsyncRpc
from rnnserve.client.aio._session import AsyncSession
from rnnserve.client.aio._streams import AsyncGeneration
from rnnserve.v1 import rnnserve_pb2 as pb


class _SessionOpener:
    """``await client.session(...)`` gives a session; ``async with`` also closes it on exit."""

    def __init__(self, open_: Callable[[], Awaitable[AsyncSession]]) -> None:
        self._open = open_
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncClient(ClientCore):
    """An asyncio rnnserve client with the same methods as :class:`~rnnserve.client.Client`.

    Unary methods are coroutines; ``generate``/``Session.stream``/``Session.generate`` return
    async iterators; ``session``/``attach``/``restore`` can be awaited or used with
    ``async with``. Create it inside a running event loop; ``await client.close()`` (or
    ``async with``) releases the channel. Takes the same arguments as ``Client`` (``token``
    and the ``tls*`` options included).
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
        channel: grpc.aio.Channel | None = None,
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
                channel = grpc.aio.secure_channel(target, credentials, options=settings)
            else:
                channel = grpc.aio.insecure_channel(target, options=settings)
        self._channel = channel
        self._rpc = AsyncRpc(channel, self._policy)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model (latest version of each) the server serves."""
        response = await self._rpc.call(
            "ListModels", pb.ListModelsRequest(), timeout=timeout, idempotent=True
        )
        return [decode_model(model) for model in response.models]

    async def model(
        self, name: str, version: int = 0, *, refresh: bool = False, timeout: float | None = None
    ) -> ModelInfo:
        """Describe one model version (0: the latest); cached unless ``refresh``."""
        cached = self._cached_model(name, version, refresh)
        if cached is not None:
            return cached
        request = pb.GetModelRequest(model=model_ref(name, version))
        response = await self._rpc.call("GetModel", request, timeout=timeout, idempotent=True)
        return self._remember_model(name, version, decode_model(response.model))

    async def _session_from(
        self, response: Any, timeout: float | None, *, opened: bool = True
    ) -> AsyncSession:
        info = decode_session(response.session)
        try:
            model = await self.model(info.model, info.version, timeout=timeout)
        except RnnServeError:
            if not opened:  # an attached session stays as it was
                raise
            # Do not leak a session the caller never got hold of.
            with contextlib.suppress(RnnServeError):
                request = pb.CloseSessionRequest(session_id=info.session_id)
                await self._rpc.for_session(info.session_id).call(
                    "CloseSession", request, timeout=1
                )
            raise
        return AsyncSession(self._rpc, info, model)

    def session(
        self, model: str, version: int = 0, *, timeout: float | None = None
    ) -> _SessionOpener:
        """Open a session on a model version: ``async with client.session("m") as s:``."""

        async def open_() -> AsyncSession:
            request = pb.CreateSessionRequest(model=model_ref(model, version))
            response = await self._rpc.call("CreateSession", request, timeout=timeout)
            return await self._session_from(response, timeout)

        return _SessionOpener(open_)

    def attach(self, session_id: str, *, timeout: float | None = None) -> _SessionOpener:
        """A session object for an existing session id."""

        async def open_() -> AsyncSession:
            request = pb.GetSessionRequest(session_id=session_id)
            rpc = self._rpc.for_session(session_id)
            response = await rpc.call("GetSession", request, timeout=timeout, idempotent=True)
            return await self._session_from(response, timeout, opened=False)

        return _SessionOpener(open_)

    def restore(self, snapshot: bytes, *, timeout: float | None = None) -> _SessionOpener:
        """Open a new session from snapshot bytes."""

        async def open_() -> AsyncSession:
            request = pb.ImportStateRequest(snapshot=snapshot)
            response = await self._rpc.call("ImportState", request, timeout=timeout)
            return await self._session_from(response, timeout)

        return _SessionOpener(open_)

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
    ) -> AsyncGeneration:
        """Sample text on a fresh session that closes when generation ends::

        async for piece in client.generate("char-lstm", "Once ", max_tokens=100):
            ...
        """

        async def request() -> pb.GenerateRequest:
            vocabulary = None
            if needs_vocabulary(prompt):
                vocabulary = (await self.model(model, version, timeout=timeout)).vocabulary
            settings = generation_settings(
                max_tokens, temperature, top_k, top_p, seed, stop, close_session=True
            )
            return aim_generation(
                settings, model=model, version=version, prompt=prompt, vocabulary=vocabulary
            )

        return AsyncGeneration(self._rpc, request, timeout)

    async def predict(
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
        """Stateless whole-sequence inference (see :meth:`Client.predict`)."""
        info = await self.model(model, version, timeout=timeout)
        options = output_options(output, steps, top_k)
        request = predict_request(model, version, sequences, options, info.vocabulary)
        response = await self._rpc.call("Predict", request, timeout=timeout, idempotent=True)
        return [decode_result(result) for result in response.results]

    async def close(self) -> None:
        """Close the channel (if this client made it)."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
