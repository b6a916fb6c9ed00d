"""The asyncio client: the same methods as Client, awaitable, over a grpc.aio channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from typing import Any

import grpc
import grpc.aio
from rnnserve.client._aio_connection import AsyncSessionStream
from rnnserve.client._client_core import ClientCore, model_ref, remaining
from rnnserve.client._codec import (
    decode_model,
    decode_result,
    decode_session,
    generation_settings,
    output_options,
)
from rnnserve.client._errors import (
    NotFound,
    RnnServeError,
    convert_rpc_error,
)
from rnnserve.client._retry import RetryPolicy
from rnnserve.client._session_core import SessionCore
from rnnserve.client._stream_core import (
    CALL_DONE,
    END,
    RAISED,
    GenerationCore,
    OutputStreamCore,
)
from rnnserve.client._types import (
    GeneratedToken,
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputOptions,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb


class AsyncOutputStream(OutputStreamCore, AsyncIterator[StepOutput]):
    """The asyncio :class:`~rnnserve.client.OutputStream`: ``async for`` gives one output per
    input; a refused input raises its error from ``__anext__`` and the stream carries on
    (:meth:`results` yields errors in place instead)."""

    def __init__(
        self,
        start: Callable[[], Any],
        open_request: pb.StreamRequest,
        inputs: Iterable[InputLike] | AsyncIterable[InputLike],
        options: OutputOptions,
        vocabulary: Vocabulary | None,
        on_output: Callable[[StepOutput | None], None] = lambda _: None,
    ) -> None:
        super().__init__(open_request, options, vocabulary, on_output)
        self._start = start
        self._inputs = inputs
        self._pending: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._call: Any = None
        self._writer: asyncio.Task[None] | None = None

    async def _items(self) -> AsyncIterator[InputLike]:
        if isinstance(self._inputs, AsyncIterable):
            async for item in self._inputs:
                yield item
        else:
            for item in self._inputs:
                yield item

    async def _write(self) -> None:
        try:
            await self._call.write(self._open_request)
            index = 0
            async for item in self._items():
                kind, value, request = self._input_request(item, index)
                self._pending.put_nowait((kind, value))
                if request is not None:
                    index += 1
                    await self._call.write(request)
            await self._call.done_writing()
        except asyncio.CancelledError:
            raise
        except grpc.RpcError:
            pass  # the call failed; the reader reports its status
        except Exception as error:  # the caller's iterable failed: hand it to the reader
            self._pending.put_nowait((RAISED, error))
            await self._call.done_writing()
        finally:
            self._pending.put_nowait((END, None))

    async def _read(self) -> pb.StreamResponse:
        try:
            response = await self._call.read()
        except grpc.RpcError as error:
            self._call_failed()
            raise convert_rpc_error(error) from None
        if response is grpc.aio.EOF:
            self._finished = True
            raise RnnServeError("the server ended the stream early", code=grpc.StatusCode.INTERNAL)
        return response  # type: ignore[no-any-return]

    async def __anext__(self) -> StepOutput:
        if self._finished:
            raise StopAsyncIteration
        if self._call is None:
            self._call = self._start()
            self._call.add_done_callback(lambda _: self._pending.put_nowait((CALL_DONE, None)))
            self._writer = asyncio.ensure_future(self._write())
        if self._session is None:
            response = await self._read()
            if response.HasField("error"):
                self.cancel()
            self._opened(response)
        kind, value = await self._pending.get()
        while kind == CALL_DONE:
            if self._pending.empty():
                await self._read()  # nothing more will come: raises how the call ended
            kind, value = await self._pending.get()
        if self._ended(kind, value):
            raise StopAsyncIteration
        return self._output(await self._read())

    async def results(self) -> AsyncIterator[StepOutput | RnnServeError]:
        """Iterate the outputs, yielding each refused input's error in place of its output."""
        while True:
            try:
                yield await self.__anext__()
            except StopAsyncIteration:
                return
            except RnnServeError as error:
                if self._finished:
                    raise
                yield error

    def cancel(self) -> None:
        """Cancel the call; the session stays open on the server."""
        self._finished = True
        if self._writer is not None:
            self._writer.cancel()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncOutputStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._finished:
            self.cancel()


class AsyncGeneration(GenerationCore, AsyncIterator[str]):
    """The asyncio :class:`~rnnserve.client.Generation`: ``async for`` gives text pieces as the
    server produces them; ``tokens``, ``text``, ``finish_reason`` and ``session_id`` as there."""

    def __init__(
        self,
        start: Callable[[], Awaitable[Any]],
        on_finish: Callable[[GeneratedToken | None], None] = lambda _: None,
    ) -> None:
        super().__init__(on_finish)
        self._start = start
        self._call: Any = None

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        if self._call is None:
            self._call = await self._start()
        try:
            response = await self._call.read()
        except grpc.RpcError as error:
            self._finish(None)
            raise convert_rpc_error(error) from None
        if response is grpc.aio.EOF:
            self._finish_at_end()
            raise StopAsyncIteration
        return self._token(response)

    async def read(self) -> str:
        """Consume the rest of the generation and return the whole text."""
        async for _ in self:
            pass
        return self.text

    def cancel(self) -> None:
        """Stop generation now (the server stops sampling promptly)."""
        if not self._finished:
            if self._call is not None:
                self._call.cancel()
            self._finish(None)

    async def __aenter__(self) -> AsyncGeneration:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()


class AsyncSession(SessionCore):
    """The asyncio :class:`~rnnserve.client.Session`; same methods, awaitable.

    ``stream`` and ``generate`` return async iterators directly (no ``await``)."""

    def __init__(self, client: AsyncClient, info: SessionInfo, model: ModelInfo) -> None:
        super().__init__(info, model)
        self._client = client

    def __repr__(self) -> str:
        return f"AsyncSession({self.session_id!r}, model={self._model.name!r})"

    async def feed(
        self,
        data: InputLike,
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
        timeout: float | None = None,
    ) -> StepOutput:
        """Feed one message of input and return its outputs (see :meth:`Session.feed`)."""
        options = output_options(output, steps, top_k)
        if self._step_count is None:
            await self.describe(timeout=timeout)
        request = self._step_request(data, options)
        try:
            response = await self._client._call("Step", request, timeout=timeout, idempotent=True)
        except RnnServeError as error:
            self._step_failed(error)
            raise
        return self._stepped(response)

    def stream(
        self,
        inputs: Iterable[InputLike] | AsyncIterable[InputLike],
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
        timeout: float | None = None,
    ) -> AsyncOutputStream:
        """Stream inputs (a sync or async iterable) over one bidirectional call."""
        options = output_options(output, steps, top_k)
        return AsyncOutputStream(
            lambda: self._client._start_stream(timeout),
            self._stream_open_request(),
            inputs,
            options,
            self._model.vocabulary,
            on_output=self._track_output,
        )

    def open_stream(self, *, timeout: float | None = None) -> AsyncSessionStream:
        """One ``Stream`` call for request/reply feeding (see :meth:`Session.open_stream`);
        use ``async with session.open_stream() as stream:`` (or ``await stream.open()``)."""
        return AsyncSessionStream(
            lambda: self._client._start_stream(timeout),
            self.session_id,
            self._model.vocabulary,
            on_step_count=self._track_step_count,
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
    ) -> AsyncGeneration:
        """Sample from this session's language model (see :meth:`Session.generate`)."""
        settings = generation_settings(max_tokens, temperature, top_k, top_p, seed, stop)
        request = self._generate_request(prompt, settings)

        async def start() -> Any:
            return self._client._start_generate(request, timeout)

        return AsyncGeneration(start, on_finish=self._track_generation)

    async def describe(self, *, timeout: float | None = None) -> SessionInfo:
        """Ask the server for the session's current description."""
        response = await self._client._call(
            "GetSession",
            pb.GetSessionRequest(session_id=self.session_id),
            timeout=timeout,
            idempotent=True,
        )
        return self._described(response.session)

    async def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Set the state back to the model's initial state (step count 0)."""
        response = await self._client._call(
            "ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout=timeout
        )
        return self._described(response.session)

    async def snapshot(self, *, timeout: float | None = None) -> bytes:
        """Export the state as snapshot bytes (see :meth:`AsyncClient.restore`)."""
        response = await self._client._call(
            "ExportState",
            pb.ExportStateRequest(session_id=self.session_id),
            timeout=timeout,
            idempotent=True,
        )
        self._described(response.session)
        return bytes(response.snapshot)

    async def close(self, *, timeout: float | None = None) -> None:
        """Close the session and free its state (closing twice is harmless)."""
        request = self._close_request()
        if request is None:
            return
        # Already gone (expired, evicted or closed) means nothing is left to free.
        with contextlib.suppress(NotFound):
            await self._client._call("CloseSession", request, timeout=timeout)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


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
    ``async with``) releases the channel.
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
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, options=list(options))
            else:
                channel = grpc.aio.insecure_channel(target, options=list(options))
        super().__init__(target, client_id, timeout, retry, channel, owns_channel)
        self._channel = channel

    async def _call(
        self, method: str, request: Any, *, timeout: float | None, idempotent: bool = False
    ) -> Any:
        """Run a unary call with the deadline, metadata and (if idempotent) retries."""
        callable_: Callable[..., Any] = getattr(self._stub, method)
        deadline = self._deadline(timeout)
        attempt = 1
        while True:
            try:
                return await callable_(
                    request, timeout=remaining(deadline), metadata=self._metadata
                )
            except grpc.RpcError as rpc_error:
                error = convert_rpc_error(rpc_error)
            await asyncio.sleep(self._retry_wait(error, attempt, deadline, idempotent))
            attempt += 1

    def _start_stream(self, timeout: float | None) -> Any:
        return self._stub.Stream(timeout=self._timeout(timeout), metadata=self._metadata)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model (latest version of each) the server serves."""
        response = await self._call(
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
        response = await self._call("GetModel", request, timeout=timeout, idempotent=True)
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
                await self._call("CloseSession", request, timeout=1)
            raise
        return AsyncSession(self, info, model)

    def session(
        self, model: str, version: int = 0, *, timeout: float | None = None
    ) -> _SessionOpener:
        """Open a session on a model version: ``async with client.session("m") as s:``."""

        async def open_() -> AsyncSession:
            request = pb.CreateSessionRequest(model=model_ref(model, version))
            response = await self._call("CreateSession", request, timeout=timeout)
            return await self._session_from(response, timeout)

        return _SessionOpener(open_)

    def attach(self, session_id: str, *, timeout: float | None = None) -> _SessionOpener:
        """A session object for an existing session id."""

        async def open_() -> AsyncSession:
            request = pb.GetSessionRequest(session_id=session_id)
            response = await self._call("GetSession", request, timeout=timeout, idempotent=True)
            return await self._session_from(response, timeout, opened=False)

        return _SessionOpener(open_)

    def restore(self, snapshot: bytes, *, timeout: float | None = None) -> _SessionOpener:
        """Open a new session from snapshot bytes."""

        async def open_() -> AsyncSession:
            request = pb.ImportStateRequest(snapshot=snapshot)
            response = await self._call("ImportState", request, timeout=timeout)
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

        async def start() -> Any:
            vocabulary = None
            if self._needs_vocabulary(prompt):
                vocabulary = (await self.model(model, version, timeout=timeout)).vocabulary
            settings = generation_settings(max_tokens, temperature, top_k, top_p, seed, stop)
            request = self._one_shot_request(model, version, prompt, vocabulary, settings)
            return self._start_generate(request, timeout)

        return AsyncGeneration(start)

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
        request = self._predict_request(model, version, sequences, options, info.vocabulary)
        response = await self._call("Predict", request, timeout=timeout, idempotent=True)
        return [decode_result(result) for result in response.results]

    async def close(self) -> None:
        """Close the channel (if this client made it)."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
