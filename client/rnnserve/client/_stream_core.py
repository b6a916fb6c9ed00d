"""What the sync and asyncio stream iterators share: request building and reply decoding, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from rnnserve.client._codec import (
    decode_result,
    decode_session,
    decode_token,
    encode_input,
    encode_options,
)
from rnnserve.client._errors import InvalidArgument, RnnServeError, from_stream_error
from rnnserve.client._replay import REPLAY_OUTPUT, ReplayLog, failover_wait, unanswered
from rnnserve.client._requests import stream_open_request, stream_step_request
from rnnserve.client._types import (
    FinishReason,
    GeneratedToken,
    InputLike,
    OutputFormat,
    OutputOptions,
    OutputSteps,
    SessionInfo,
    StepOutput,
)
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb

# What the writer tells the reader about each input, in order: a request went out, the input
# could not be encoded (its error), or the caller's iterable raised (re-raised as is).
SENT = "sent"
LOCAL_ERROR = "local"
RAISED = "raised"
END = "end"
# How a call that lost its server process ends, through a proxy or directly.
_CONNECTION_LOST = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
# The call ended (any status); lets a reader waiting for a slow input learn that the call died.
CALL_DONE = "call-done"


def checked(response: pb.StreamResponse) -> pb.StreamResponse:
    """A Stream reply, or its in-band error raised (the stream carries on)."""
    if response.HasField("error"):
        raise from_stream_error(response.error)
    return response


class OutputStreamCore:
    """The I/O-free half of :class:`OutputStream` and :class:`AsyncOutputStream`."""

    def __init__(
        self,
        session_id: str,
        options: OutputOptions,
        vocabulary: Vocabulary | None,
        on_output: Callable[[StepOutput | None], None],
    ) -> None:
        self._open_request = stream_open_request(session_id)
        self._options = encode_options(options)
        self._vocabulary = vocabulary
        self._on_output = on_output
        self._session: SessionInfo | None = None
        self._finished = False

    @property
    def session(self) -> SessionInfo | None:
        """The session as the server described it when the stream opened (after the first
        output)."""
        return self._session

    def _input_request(
        self, item: InputLike, index: int
    ) -> tuple[str, Any, pb.StreamRequest | None]:
        """The pending entry for one input and, when it could be encoded, its request."""
        try:
            step = encode_input(item, self._vocabulary)
        except (TypeError, ValueError) as error:
            return LOCAL_ERROR, error, None
        return SENT, None, pb.StreamRequest(request_id=str(index), step=step, output=self._options)

    def _opened(self, response: pb.StreamResponse) -> None:
        """Take the reply to the open request (a refusal is raised; the caller cancels first)."""
        self._session = decode_session(checked(response).session)

    def _ended(self, kind: str, value: Any) -> bool:
        """Whether a pending entry ends the stream; raises for an input that never went out."""
        if kind == END:
            self._finished = True
            return True
        if kind == LOCAL_ERROR:
            raise InvalidArgument(str(value)) from value
        if kind == RAISED:
            raise value
        return False

    def _output(self, response: pb.StreamResponse) -> StepOutput:
        """The output carried by one reply (or its in-band error, raised)."""
        output = decode_result(checked(response).result)
        self._on_output(output)
        return output

    def _call_failed(self) -> None:
        # After a failed call a step may or may not have run.
        self._finished = True
        self._on_output(None)


class GenerationCore:
    """The I/O-free half of :class:`Generation` and :class:`AsyncGeneration`."""

    def __init__(self, on_finish: Callable[[GeneratedToken | None], None]) -> None:
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

    def _token(self, response: pb.GenerateResponse) -> str:
        token = decode_token(response)
        self.tokens.append(token)
        return token.text

    def _finish_at_end(self) -> None:
        self._finish(self.tokens[-1] if self.tokens else None)

    def _finish(self, last: GeneratedToken | None) -> None:
        if not self._finished:
            self._finished = True
            self._on_finish(last if last is not None and last.finish_reason else None)


class SessionStreamCore:
    """The I/O-free half of :class:`SessionStream` and :class:`AsyncSessionStream`."""

    def __init__(
        self,
        session_id: str,
        vocabulary: Vocabulary | None,
        on_step_count: Callable[[int | None], None],
        durable: bool = False,
    ) -> None:
        self._open_request = stream_open_request(session_id)  # numbered "1" when it is sent
        self._vocabulary = vocabulary
        self._on_step_count = on_step_count
        self._counter = 0
        self._closed = False
        # For a reconnect after the proxy lost the backend: the step count and the inputs
        # beyond the durable step count (kept only while the server reports durability).
        self._step_count: int | None = None
        self._replay = ReplayLog()
        # The session was last described with a durable step count: a failover may be under way
        # when the stream opens, so an UNAVAILABLE open is tried again (see failover_wait).
        self._replay.tracking = durable

    def _numbered(self, request: pb.StreamRequest) -> pb.StreamRequest:
        self._counter += 1
        request.request_id = str(self._counter)
        return request

    def _step_request(
        self, data: InputLike, output: OutputFormat | str, steps: OutputSteps | str, top_k: int
    ) -> pb.StreamRequest:
        return stream_step_request(data, self._vocabulary, output, steps, top_k)

    def _fed(self, response: pb.StreamResponse, request: pb.StreamRequest) -> StepOutput:
        result = decode_result(response.result)
        if self._step_count is not None:
            self._replay.answered(
                self._step_count, request.step, result.step_count, result.durable_step_count
            )
        self._step_count = result.step_count
        self._on_step_count(result.step_count)
        return result

    def _was_opened(self, response: pb.StreamResponse) -> SessionInfo:
        session = decode_session(response.session)
        self._step_count = session.step_count
        self._replay.tracking = session.durable_step_count is not None
        return session

    def _was_reset(self, response: pb.StreamResponse) -> SessionInfo:
        session = decode_session(response.session)
        self._replay.clear()
        self._step_count = session.step_count
        self._on_step_count(session.step_count)
        return session

    # -- reconnecting (the proxy lost the backend; the state tier lets another take over) -----

    def _may_reconnect(self, error: RnnServeError) -> bool:
        """Whether a failed call may be the loss of its server process, to be survived by
        opening a new call on the same session (only while the server reports durability)."""
        return self._replay.tracking and error.code in _CONNECTION_LOST

    @staticmethod
    def _reconnect_wait(
        failure: RnnServeError, request: pb.StreamRequest, attempt: int, started: float
    ) -> float:
        """Seconds to wait before reconnecting again (see `failover_wait`); raises the failure
        when it is final (DataLoss when `request` was a lost reply the server could not give)."""
        resent_ahead = request.HasField("expected_step_count")
        return failover_wait(unanswered(failure, resent_ahead), attempt, started)

    def _resume_requests(
        self, opened: pb.StreamResponse, request: pb.StreamRequest
    ) -> list[pb.StreamRequest]:
        """After re-opening the session on a new call: the replays that bring it back to this
        stream's step count before `request` is sent again (none before a reset).

        Raises:
            DataLoss: the session fell back past the inputs kept, or went ahead (a step ran
                whose reply was lost): the outputs of an uninterrupted run cannot be given.
        """
        server_step_count = decode_session(checked(opened).session).step_count
        if request.control == pb.CONTROL_ACTION_RESET or self._step_count is None:
            return []
        if server_step_count > self._step_count and request.WhichOneof("kind") == "step":
            # `request` ran and its reply was lost with the process: sent again guarded by the
            # step count it was sent at, the server answers it from the reply it keeps.
            request.expected_step_count = self._step_count
            return []
        plan = self._replay.plan(server_step_count, self._step_count)
        return [pb.StreamRequest(step=item.step, output=REPLAY_OUTPUT) for item in plan]
