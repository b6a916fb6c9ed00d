"""Request/reply feeding over one long-lived Stream call (cheaper per message than unary Step)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from rnnserve.client._errors import RnnServeError, convert_rpc_error
from rnnserve.client._replay import failover_wait
from rnnserve.client._rpc import Rpc
from rnnserve.client._stream_core import SessionStreamCore, checked
from rnnserve.client._types import InputLike, OutputFormat, OutputSteps, SessionInfo, StepOutput
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb

_CLOSE = None  # put on the request queue to half-close the call


class SessionStream(SessionStreamCore):
    """A session's open ``Stream`` call used one message at a time: :meth:`feed` sends an input
    and waits for its reply, so each output can decide the next input.

    Get one from :meth:`Session.open_stream` and use it as a context manager. Refused inputs
    raise their :class:`RnnServeError` and the stream carries on; the session outlives the
    stream. The deadline given when opening bounds the whole call. Not thread-safe.
    """

    def __init__(
        self,
        rpc: Rpc,
        timeout: float | None,
        session_id: str,
        vocabulary: Vocabulary | None,
        on_step_count: Callable[[int | None], None] = lambda _: None,
        durable: bool = False,
    ) -> None:
        super().__init__(session_id, vocabulary, on_step_count, durable)
        self._rpc = rpc
        self._timeout = timeout
        self._start_call()
        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = self._send(self._open_request)
                break
            except RnnServeError as error:
                self._finish()
                self._call.cancel()
                if not self._may_reconnect(error):
                    raise
                time.sleep(failover_wait(error, attempt, started))
                attempt += 1
                self._start_call()
        self.session: SessionInfo = self._was_opened(response)
        """The session as the server last described it (on open and reset)."""

    def _start_call(self) -> None:
        self._requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
        self._call: Any = self._rpc.stream(self._request_iterator(self._requests), self._timeout)
        self._closed = False

    @staticmethod
    def _request_iterator(
        requests: queue.Queue[pb.StreamRequest | None],
    ) -> Iterator[pb.StreamRequest]:
        while (request := requests.get()) is not _CLOSE:
            yield request

    def _exchange(self, request: pb.StreamRequest) -> pb.StreamResponse:
        """Send one message and return its reply; survive the loss of the server process (a
        proxy in front, a shared state tier behind) by continuing on a new call."""
        try:
            return self._send(request)
        except RnnServeError as error:
            if not self._may_reconnect(error):
                raise
            return self._reconnect(request)

    def _reconnect(self, request: pb.StreamRequest) -> pb.StreamResponse:
        """Open the session again on a new call (the proxy sends it to a survivor, which loads
        it), replay the inputs since the durable step count, then send `request` again."""
        started, attempt = time.monotonic(), 0
        while True:
            self._call.cancel()
            self._start_call()
            try:
                opened = self._send(self._open_request)
                for replay in self._resume_requests(opened, request):
                    self._send(replay)
                return self._send(request)
            except RnnServeError as failure:
                time.sleep(self._reconnect_wait(failure, request, attempt, started))
                attempt += 1

    def _send(self, request: pb.StreamRequest) -> pb.StreamResponse:
        if self._closed:
            raise RnnServeError("the stream is closed", code=grpc.StatusCode.CANCELLED)
        self._requests.put(self._numbered(request))
        try:
            response: pb.StreamResponse = next(self._call)
        except StopIteration:
            self._finish()
            raise RnnServeError(
                "the server ended the stream", code=grpc.StatusCode.UNAVAILABLE
            ) from None
        except grpc.RpcError as error:
            self._finish()
            self._on_step_count(None)  # a step may or may not have run
            raise convert_rpc_error(error) from None
        return checked(response)

    def feed(
        self,
        data: InputLike,
        *,
        output: OutputFormat | str = OutputFormat.RAW,
        steps: OutputSteps | str = OutputSteps.ALL,
        top_k: int = 5,
    ) -> StepOutput:
        """Send one message of input and return its outputs (see :meth:`Session.feed`).

        If the server process holding the session is lost (behind a proxy, with a shared state
        tier), the stream continues on a new call to the process that takes the session over,
        replaying the inputs since the durable step count first, so the outputs are those of an
        uninterrupted run.
        """
        request = self._step_request(data, output, steps, top_k)
        return self._fed(self._exchange(request), request)

    def reset(self) -> SessionInfo:
        """Set the session's state back to the model's initial state."""
        self.session = self._was_reset(
            self._exchange(pb.StreamRequest(control=pb.CONTROL_ACTION_RESET))
        )
        return self.session

    def snapshot(self) -> bytes:
        """Export the session's state as snapshot bytes."""
        return bytes(self._exchange(pb.StreamRequest(control=pb.CONTROL_ACTION_SNAPSHOT)).snapshot)

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(_CLOSE)

    def close(self) -> None:
        """End the call (the session stays open on the server)."""
        if self._closed:
            return
        self._finish()
        # Drain the end of the call so the server sees a clean half-close, not a cancellation.
        try:
            for _ in self._call:
                pass
        except grpc.RpcError:
            pass

    def __enter__(self) -> SessionStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._requests.put(_CLOSE)
