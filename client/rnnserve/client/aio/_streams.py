"""Asyncio stream iterators: per-step outputs over one Stream call, and generated text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from rnnserve.client._errors import RnnServeError, convert_rpc_error
from rnnserve.client._stream_core import (
    CALL_DONE,
    END,
    RAISED,
    GenerationCore,
    OutputStreamCore,
)
from rnnserve.client._types import GeneratedToken, InputLike, OutputOptions, StepOutput
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.client.aio._rpc import AsyncRpc
from rnnserve.v1 import rnnserve_pb2 as pb


class AsyncOutputStream(OutputStreamCore, AsyncIterator[StepOutput]):
    """The asyncio :class:`~rnnserve.client.OutputStream`: ``async for`` gives one output per
    input; a refused input raises its error from ``__anext__`` and the stream carries on
    (:meth:`results` yields errors in place instead)."""

    def __init__(
        self,
        rpc: AsyncRpc,
        timeout: float | None,
        session_id: str,
        inputs: Iterable[InputLike] | AsyncIterable[InputLike],
        options: OutputOptions,
        vocabulary: Vocabulary | None,
        on_output: Callable[[StepOutput | None], None] = lambda _: None,
    ) -> None:
        super().__init__(session_id, options, vocabulary, on_output)
        self._rpc = rpc
        self._timeout = timeout
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
            self._call = self._rpc.stream(self._timeout)
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
        rpc: AsyncRpc,
        request: Callable[[], Awaitable[pb.GenerateRequest]],
        timeout: float | None,
        on_finish: Callable[[GeneratedToken | None], None] = lambda _: None,
    ) -> None:
        super().__init__(on_finish)
        self._rpc = rpc
        self._request = request  # awaited at the first token: it may need to ask the server
        self._timeout = timeout
        self._call: Any = None

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        if self._call is None:
            self._call = self._rpc.generate(await self._request(), self._timeout)
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
