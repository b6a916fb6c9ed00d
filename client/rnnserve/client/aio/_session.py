"""An asyncio session: one model version's hidden state kept on the server between calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Any

from rnnserve.client._codec import output_options
from rnnserve.client._errors import NotFound, RnnServeError
from rnnserve.client._requests import generation_settings
from rnnserve.client._session_core import SessionCore
from rnnserve.client._types import (
    InputLike,
    ModelInfo,
    OutputFormat,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.client.aio._connection import AsyncSessionStream
from rnnserve.client.aio._rpc import AsyncRpc
from rnnserve.client.aio._streams import AsyncGeneration, AsyncOutputStream
from rnnserve.v1 import rnnserve_pb2 as pb


class AsyncSession(SessionCore):
    """The asyncio :class:`~rnnserve.client.Session`; same methods, awaitable.

    ``stream`` and ``generate`` return async iterators directly (no ``await``)."""

    def __init__(self, rpc: AsyncRpc, info: SessionInfo, model: ModelInfo) -> None:
        super().__init__(info, model)
        # Every call of the session names it, so a proxy routes it to the process holding it.
        self._rpc = rpc.for_session(info.session_id)

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
            response = await self._rpc.call("Step", request, timeout=timeout, idempotent=True)
        except RnnServeError as error:
            if not self._may_have_failed_over(error):
                self._step_failed(error)
                raise
            response = await self._recover(request, error, timeout)
        return self._stepped(response, request)

    async def _recover(
        self, request: pb.StepRequest, error: RnnServeError, timeout: float | None
    ) -> pb.StepResponse:
        """The session's process died and the state tier lets another take it over: wait for
        the move, replay the inputs kept since the durable step count (where the survivor
        starts), then send the step again, so its outputs are those an uninterrupted run gives."""
        started, attempt = time.monotonic(), 0
        while True:
            try:
                described = await self._rpc.call(
                    "GetSession",
                    pb.GetSessionRequest(session_id=self.session_id),
                    timeout=timeout,
                    idempotent=True,
                )
                for replay in self._replays(request, described.session.step_count, error):
                    await self._rpc.call("Step", replay, timeout=timeout, idempotent=True)
                response: pb.StepResponse = await self._rpc.call(
                    "Step", request, timeout=timeout, idempotent=True
                )
                return response
            except RnnServeError as failure:
                await asyncio.sleep(self._failover_wait(failure, attempt, started))
                attempt += 1

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """An idempotent call of this session, retried on UNAVAILABLE; while the server reports
        durability, a failover in progress is waited out (see ``FAILOVER_WAIT_S``)."""
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return await self._rpc.call(method, request, timeout=timeout, idempotent=True)
            except RnnServeError as failure:
                await asyncio.sleep(self._session_call_wait(failure, attempt, started))
                attempt += 1

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
        self._stepping_out_of_sight()
        return AsyncOutputStream(
            self._rpc,
            timeout,
            self.session_id,
            inputs,
            options,
            self._model.vocabulary,
            on_output=self._track_output,
        )

    def open_stream(self, *, timeout: float | None = None) -> AsyncSessionStream:
        """One ``Stream`` call for request/reply feeding (see :meth:`Session.open_stream`);
        use ``async with session.open_stream() as stream:`` (or ``await stream.open()``)."""
        return AsyncSessionStream(
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
    ) -> AsyncGeneration:
        """Sample from this session's language model (see :meth:`Session.generate`)."""
        settings = generation_settings(max_tokens, temperature, top_k, top_p, seed, stop)
        request = self._generate_request(prompt, settings)

        async def built() -> pb.GenerateRequest:
            return request

        self._stepping_out_of_sight()
        return AsyncGeneration(self._rpc, built, timeout, on_finish=self._track_generation)

    async def describe(self, *, timeout: float | None = None) -> SessionInfo:
        """Ask the server for the session's current description."""
        request = pb.GetSessionRequest(session_id=self.session_id)
        response = await self._call("GetSession", request, timeout)
        return self._described(response.session)

    async def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Set the state back to the model's initial state (step count 0)."""
        response = await self._rpc.call(
            "ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout=timeout
        )
        return self._described(response.session)

    async def snapshot(self, *, timeout: float | None = None) -> bytes:
        """Export the state as snapshot bytes (see :meth:`AsyncClient.restore`)."""
        request = pb.ExportStateRequest(session_id=self.session_id)
        response = await self._call("ExportState", request, timeout)
        self._described(response.session)
        return bytes(response.snapshot)

    async def close(self, *, timeout: float | None = None) -> None:
        """Close the session and free its state (closing twice is harmless)."""
        if self._closed:
            return
        self._closed = True
        # Already gone (expired, evicted or closed) means nothing is left to free.
        with contextlib.suppress(NotFound):
            request = pb.CloseSessionRequest(session_id=self.session_id)
            # Idempotent in effect: a close that ran twice finds the session gone (NotFound).
            await self._call("CloseSession", request, timeout)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
