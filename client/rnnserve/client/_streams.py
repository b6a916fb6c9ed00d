"""Synchronous stream iterators: per-step outputs over one Stream call, and generated text."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from rnnserve.client._codec import (
    decode_result,
    decode_session,
    decode_token,
    encode_input,
    encode_options,
)
from rnnserve.client._errors import (
    InvalidArgument,
    RnnServeError,
    convert_rpc_error,
    from_stream_error,
)
from rnnserve.client._types import (
    FinishReason,
    GeneratedToken,
    InputLike,
    OutputOptions,
    SessionInfo,
    StepOutput,
)
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb

# What the request thread tells the reader about each input, in order: a request went out, the
# input could not be encoded (its error), or the caller's iterable raised (re-raised as is).
_SENT = "sent"
_LOCAL_ERROR = "local"
_RAISED = "raised"
_END = "end"
# The call ended (any status); lets a reader waiting for a slow input learn that the call died.
_CALL_DONE = "call-done"


class OutputStream(Iterator[StepOutput]):
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
        start: Callable[[Iterator[pb.StreamRequest]], Any],
        open_request: pb.StreamRequest,
        inputs: Iterable[InputLike],
        options: OutputOptions,
        vocabulary: Vocabulary | None,
        on_output: Callable[[StepOutput | None], None] = lambda _: None,
    ) -> None:
        self._inputs = inputs
        self._options = encode_options(options)
        self._vocabulary = vocabulary
        self._on_output = on_output
        self._pending: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._open_request = open_request
        self._session: SessionInfo | None = None
        self._finished = False
        self._lock = threading.Lock()
        self._call: Any = start(self._requests())
        self._call.add_done_callback(lambda _: self._pending.put((_CALL_DONE, None)))

    @property
    def session(self) -> SessionInfo | None:
        """The session as the server described it when the stream opened (after the first
        ``next()``)."""
        return self._session

    def _requests(self) -> Iterator[pb.StreamRequest]:
        # Runs on gRPC's request thread; the reader learns about each input through _pending so
        # that a local error or the caller's own exception surfaces at the right position.
        yield self._open_request
        try:
            for index, item in enumerate(self._inputs):
                try:
                    step = encode_input(item, self._vocabulary)
                except (TypeError, ValueError) as error:
                    self._pending.put((_LOCAL_ERROR, error))
                    continue
                self._pending.put((_SENT, None))
                yield pb.StreamRequest(request_id=str(index), step=step, output=self._options)
        except Exception as error:  # the caller's iterable failed: hand it to the reader
            self._pending.put((_RAISED, error))
        finally:
            self._pending.put((_END, None))

    def _read(self) -> pb.StreamResponse:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except StopIteration:
            self._finished = True
            raise RnnServeError(
                "the server ended the stream early", code=grpc.StatusCode.INTERNAL
            ) from None
        except grpc.RpcError as error:
            self._finished = True
            self._on_output(None)
            raise convert_rpc_error(error) from None

    def _open(self) -> None:
        response = self._read()
        if response.HasField("error"):
            self._finished = True
            self.cancel()
            raise from_stream_error(response.error)
        self._session = decode_session(response.session)

    def __next__(self) -> StepOutput:
        with self._lock:
            if self._finished:
                raise StopIteration
            if self._session is None:
                self._open()
            kind, value = self._pending.get()
            while kind == _CALL_DONE:
                if self._pending.empty():
                    self._read()  # nothing more will come: raises how the call ended
                kind, value = self._pending.get()
            if kind == _END:
                self._finished = True
                raise StopIteration
            if kind == _LOCAL_ERROR:
                raise InvalidArgument(str(value)) from value
            if kind == _RAISED:
                raise value
            response = self._read()
            if response.HasField("error"):
                raise from_stream_error(response.error)
            output = decode_result(response.result)
            self._on_output(output)
            return output

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


class Generation(Iterator[str]):
    """Text pieces of a generation, one per token, as the server produces them.

    After (or during) iteration, ``tokens`` holds every :class:`GeneratedToken`, ``text`` the
    text so far, ``finish_reason`` why it ended and ``session_id`` the session it ran on.
    Call :meth:`cancel` (or leave a ``with`` block) to stop generation early.
    """

    def __init__(
        self,
        call: Any,
        on_finish: Callable[[GeneratedToken | None], None] = lambda _: None,
    ) -> None:
        self._call = call
        self._on_finish = on_finish
        self._finished = False
        self.tokens: list[GeneratedToken] = []

    @property
    def text(self) -> str:
        """The text generated so far."""
        return "".join(token.text for token in self.tokens)

    @property
    def token_ids(self) -> list[int]:
        """The token ids generated so far."""
        return [token.token_id for token in self.tokens]

    @property
    def finish_reason(self) -> FinishReason | None:
        """Why generation ended (``None`` while it runs or if it was cancelled)."""
        return self.tokens[-1].finish_reason if self.tokens else None

    @property
    def session_id(self) -> str | None:
        """The session generation runs on (known after the first token)."""
        return self.tokens[0].session_id if self.tokens else None

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._finish(self.tokens[-1] if self.tokens else None)
            raise
        except grpc.RpcError as error:
            self._finish(None)
            raise convert_rpc_error(error) from None
        token = decode_token(response)
        self.tokens.append(token)
        return token.text

    def _finish(self, last: GeneratedToken | None) -> None:
        if not self._finished:
            self._finished = True
            self._on_finish(last if last is not None and last.finish_reason else None)

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
