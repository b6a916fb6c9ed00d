"""The asyncio client's calls over one channel: metadata, deadlines and retries in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from rnnserve.client._call_policy import CallPolicy, session_metadata
from rnnserve.client._errors import convert_rpc_error
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc


class AsyncRpc:
    """Runs the calls of an :class:`AsyncClient`, its sessions and their streams."""

    def __init__(
        self, channel: grpc.aio.Channel, policy: CallPolicy, *, session_id: str | None = None
    ) -> None:
        self._channel = channel
        self._stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        self._policy = policy
        self._session = session_metadata(session_id)

    def for_session(self, session_id: str) -> AsyncRpc:
        """The same client's calls, each carrying ``session_id``'s routing header."""
        return AsyncRpc(self._channel, self._policy, session_id=session_id)

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self._policy.metadata + self._session

    async def call(
        self, method: str, request: Any, *, timeout: float | None, idempotent: bool = False
    ) -> Any:
        """Run a unary call with the deadline, metadata and (if idempotent) retries; a failure
        raises its :class:`RnnServeError`."""
        callable_: Callable[..., Any] = getattr(self._stub, method)
        attempts = self._policy.attempts(timeout, idempotent)
        while True:
            try:
                return await callable_(
                    request, timeout=attempts.remaining(), metadata=self._metadata
                )
            except grpc.RpcError as rpc_error:
                error = convert_rpc_error(rpc_error)
            # Outside the except block: a final failure is raised without the grpc error chained.
            await asyncio.sleep(attempts.wait_after(error))

    def stream(self, timeout: float | None) -> Any:
        """Start a Stream call (write to it and read from it); ``timeout`` bounds the whole
        call."""
        return self._stub.Stream(timeout=self._policy.timeout_for(timeout), metadata=self._metadata)

    def generate(self, request: pb.GenerateRequest, timeout: float | None) -> Any:
        """Start a Generate call; ``timeout`` bounds the whole call."""
        return self._stub.Generate(
            request, timeout=self._policy.timeout_for(timeout), metadata=self._metadata
        )
