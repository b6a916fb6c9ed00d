"""Synchronous stream iterators: per-step outputs over one Stream call, and generated text."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from rnnserve.client._errors import RnnServeError, convert_rpc_error
from rnnserve.client._rpc import Rpc
from rnnserve.client._stream_core import (
    CALL_DONE,
    END,
    RAISED,
    GenerationCore,
    OutputStreamCore,
)
from rnnserve.client._types import GeneratedToken, InputLike, OutputOptions, StepOutput
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb


class OutputStream(OutputStreamCore, Iterator[StepOutput]):
    """The outputs of a session's inputs streamed over one bidirectional ``Stream`` call.

    Iterating gives one :class:`StepOutput` per input, in order; inputs are sent as the caller's
    iterable yields them, without waiting for earlier replies. An input the server refuses
    (in-band error) raises the matching :class:`RnnServeError` from ``next()`` while the stream,
    the session and its state carry on: call ``next()`` again for the following inputs, or
    iterate :meth:`results`, which yields the errors in place instead of raising them. A failure
    of the call itself (deadline, connection lost) raises and ends the stream.
    """

    def __init__(
        self,
        rpc: Rpc,
        timeout: float | None,
        session_id: str,
        inputs: Iterable[InputLike],
        options: OutputOptions,
        vocabulary: Vocabulary | None,
        on_output: Callable[[StepOutput | None], None] = lambda _: None,
    ) -> None:
        super().__init__(session_id, options, vocabulary, on_output)
        self._inputs = inputs
        self._pending: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._call: Any = rpc.stream(self._requests(), timeout)
        self._call.add_done_callback(lambda _: self._pending.put((CALL_DONE, None)))

    def _requests(self) -> Iterator[pb.StreamRequest]:
        # Runs on gRPC's request thread; the reader learns about each input through _pending so
        # that a local error or the caller's own exception surfaces at the right position.
        yield self._open_request
        try:
            for index, item in enumerate(self._inputs):
                kind, value, request = self._input_request(item, index)
                self._pending.put((kind, value))
                if request is not None:
                    yield request
        except Exception as error:  # the caller's iterable failed: hand it to the reader
            self._pending.put((RAISED, error))
        finally:
            self._pending.put((END, None))

    def _read(self) -> pb.StreamResponse:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except StopIteration:
            self._finished = True
            raise RnnServeError(
                "the server ended the stream early", code=grpc.StatusCode.INTERNAL
            ) from None
        except grpc.RpcError as error:
            self._call_failed()
            raise convert_rpc_error(error) from None

    def _open(self) -> None:
        response = self._read()
        if response.HasField("error"):
            self.cancel()
        self._opened(response)

    def __next__(self) -> StepOutput:
        with self._lock:
            if self._finished:
                raise StopIteration
            if self._session is None:
                self._open()
            kind, value = self._pending.get()
            while kind == CALL_DONE:
                if self._pending.empty():
                    self._read()  # nothing more will come: raises how the call ended
                kind, value = self._pending.get()
            if self._ended(kind, value):
                raise StopIteration
            return self._output(self._read())

    def results(self) -> Iterator[StepOutput | RnnServeError]:
        """Iterate the outputs, yielding each refused input's error in place of its output."""
        while True:
            try:
                yield next(self)
            except StopIteration:
                return
            except RnnServeError as error:
                if self._finished:
                    raise
                yield error

    def cancel(self) -> None:
        """Cancel the call; the session stays open on the server."""
        self._finished = True
        self._call.cancel()

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._finished:
            self.cancel()

    def __del__(self) -> None:
        # An abandoned stream must not hold the call (and the server's conversation) open.
        if not getattr(self, "_finished", True) and hasattr(self, "_call"):
            self._call.cancel()


class Generation(GenerationCore, Iterator[str]):
    """Text pieces of a generation, one per token, as the server produces them.

    After (or during) iteration, ``tokens`` holds every :class:`GeneratedToken`, ``text`` the
    text so far, ``finish_reason`` why it ended and ``session_id`` the session it ran on.
    Call :meth:`cancel` (or leave a ``with`` block) to stop generation early.
    """

    def __init__(
        self,
        rpc: Rpc,
        request: pb.GenerateRequest,
        timeout: float | None,
        on_finish: Callable[[GeneratedToken | None], None] = lambda _: None,
    ) -> None:
        self._call: Any = rpc.generate(request, timeout)
        super().__init__(on_finish)

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._finish_at_end()
            raise
        except grpc.RpcError as error:
            self._finish(None)
            raise convert_rpc_error(error) from None
        return self._token(response)

    def read(self) -> str:
        """Consume the rest of the generation and return the whole text."""
        for _ in self:
            pass
        return self.text

    def cancel(self) -> None:
        """Stop generation now (the server stops sampling promptly)."""
        if not self._finished:
            self._call.cancel()
            self._finish(None)

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        # An abandoned generation must not keep the server sampling.
        if not getattr(self, "_finished", True):
            self._call.cancel()
