"""The asyncio SessionStream: request/reply feeding over one long-lived Stream call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from rnnserve.client._errors import RnnServeError, convert_rpc_error, make_error
from rnnserve.client._replay import failover_wait
from rnnserve.client._stream_core import SessionStreamCore, checked
from rnnserve.client._types import InputLike, OutputFormat, OutputSteps, SessionInfo, StepOutput
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.client.aio._rpc import AsyncRpc
from rnnserve.v1 import rnnserve_pb2 as pb


class AsyncSessionStream(SessionStreamCore):
    """The asyncio :class:`~rnnserve.client.SessionStream`: ``await stream.feed(x)`` sends one
    message over the open call and returns its outputs. Get one with
    ``async with session.open_stream() as stream:``."""

    def __init__(
        self,
        rpc: AsyncRpc,
        timeout: float | None,
        session_id: str,
        vocabulary: Vocabulary | None,
        on_step_count: Callable[[int | None], None] = lambda _: None,
        durable: bool = False,
    ) -> None:
        super().__init__(session_id, vocabulary, on_step_count, durable)
        self._rpc = rpc
        self._timeout = timeout
        self._call: Any = None
        self.session: SessionInfo | None = None
        """The session as the server last described it (on open and reset)."""

    async def open(self) -> AsyncSessionStream:
        """Start the call and bind it to the session (``async with`` does this)."""
        started, attempt = time.monotonic(), 0
        while True:
            self._call, self._closed = self._rpc.stream(self._timeout), False
            try:
                response = await self._send(self._open_request)
                break
            except RnnServeError as error:
                self._closed = True
                self._call.cancel()
                if not self._may_reconnect(error):
                    raise
                await asyncio.sleep(failover_wait(error, attempt, started))
                attempt += 1
        self.session = self._was_opened(response)
        return self

    async def _exchange(self, request: pb.StreamRequest) -> pb.StreamResponse:
        """Send one message and return its reply; survive the loss of the server process (see
        :meth:`~rnnserve.client.SessionStream.feed`) by continuing on a new call."""
        try:
            return await self._send(request)
        except RnnServeError as error:
            if not self._may_reconnect(error):
                raise
            return await self._reconnect(request)

    async def _reconnect(self, request: pb.StreamRequest) -> pb.StreamResponse:
        """Open the session again on a new call, replay the inputs since the durable step
        count, then send `request` again."""
        started, attempt = time.monotonic(), 0
        while True:
            self._call.cancel()
            self._call, self._closed = self._rpc.stream(self._timeout), False
            try:
                opened = await self._send(self._open_request)
                for replay in self._resume_requests(opened, request):
                    await self._send(replay)
                return await self._send(request)
            except RnnServeError as failure:
                await asyncio.sleep(self._reconnect_wait(failure, request, attempt, started))
                attempt += 1

    async def _send(self, request: pb.StreamRequest) -> pb.StreamResponse:
        if self._closed or self._call is None:
            raise RnnServeError("the stream is not open", code=grpc.StatusCode.CANCELLED)
        try:
            await self._call.write(self._numbered(request))
            response = await self._call.read()
        except grpc.RpcError as error:
            self._closed = True
            self._on_step_count(None)  # a step may or may not have run
            raise convert_rpc_error(error) from None
        except (asyncio.InvalidStateError, grpc.aio.BaseError):
            # grpc.aio raises these, not an RpcError, when a write meets a call whose end has
            # arrived (the server process was lost): the call's own status says why it ended.
            self._closed = True
            self._on_step_count(None)
            self._call.cancel()  # a no-op on a call that is over; gives any other one a status
            code, details = await self._call.code(), await self._call.details()
            raise make_error(code, details or "the stream ended") from None
        if response is grpc.aio.EOF:
            self._closed = True
            raise RnnServeError("the server ended the stream", code=grpc.StatusCode.UNAVAILABLE)
        return checked(response)

    async def feed(
        self,
        data: InputLike,
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
    ) -> StepOutput:
        """Send one message of input and return its outputs (the stream survives the loss of
        the server process as :meth:`~rnnserve.client.SessionStream.feed` does)."""
        request = self._step_request(data, output, steps, top_k)
        return self._fed(await self._exchange(request), request)

    async def reset(self) -> SessionInfo:
        """Set the session's state back to the model's initial state."""
        self.session = self._was_reset(
            await self._exchange(pb.StreamRequest(control=pb.CONTROL_ACTION_RESET))
        )
        return self.session

    async def snapshot(self) -> bytes:
        """Export the session's state as snapshot bytes."""
        response = await self._exchange(pb.StreamRequest(control=pb.CONTROL_ACTION_SNAPSHOT))
        return bytes(response.snapshot)

    async def close(self) -> None:
        """End the call with a clean half-close (the session stays open on the server)."""
        if self._closed or self._call is None:
            return
        self._closed = True
        with contextlib.suppress(grpc.RpcError):
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass

    async def __aenter__(self) -> AsyncSessionStream:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
