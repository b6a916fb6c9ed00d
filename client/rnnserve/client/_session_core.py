"""What Session and AsyncSession share: the session as the server last described it, no I/O."""

from __future__ import annotations

import grpc
from rnnserve.client._codec import decode_result, decode_session
from rnnserve.client._errors import RnnServeError
from rnnserve.client._replay import REPLAY_OUTPUT, ReplayLog, failover_wait, unanswered
from rnnserve.client._requests import aim_generation, step_request
from rnnserve.client._types import (
    GeneratedToken,
    InputLike,
    ModelInfo,
    OutputOptions,
    SessionInfo,
    StepOutput,
)
from rnnserve.v1 import rnnserve_pb2 as pb

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

# After these failures a step may or may not have run, so the step count must be asked again.
UNCERTAIN_CODES = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)


class SessionCore:
    """The I/O-free half of :class:`Session` and :class:`AsyncSession`: what the session is and
    how many steps it has consumed. Building a request reads that count; only replies, failures
    and calls that step the session out of sight (streams, generations) change it."""

    def __init__(self, info: SessionInfo, model: ModelInfo) -> None:
        self._info = info
        self._model = model
        self._step_count: int | None = info.step_count
        self._closed = False
        # The inputs after the durable step count, for a failover (a shared state tier only).
        self._replay = ReplayLog()
        self._replay.tracking = info.durable_step_count is not None
        self._resent_ahead = False  # the step being recovered ran, and its reply was lost

    @property
    def session_id(self) -> str:
        """The server-made session id."""
        return self._info.session_id

    @property
    def model(self) -> ModelInfo:
        """The model version this session is bound to."""
        return self._model

    @property
    def info(self) -> SessionInfo:
        """The session as last described by the server (see :meth:`describe` to refresh)."""
        return self._info

    @property
    def step_count(self) -> int | None:
        """Steps consumed since opened or last reset, as last known (``None`` if uncertain)."""
        return self._step_count

    # -- requests (they read the session, never change it) --------------------------------------

    def _step_request(self, data: InputLike, options: OutputOptions) -> pb.StepRequest:
        """A Step request carrying the expected step count (known: the caller describes first)."""
        assert self._step_count is not None
        return step_request(
            self.session_id, self._step_count, data, self._model.vocabulary, options
        )

    def _generate_request(
        self, prompt: InputLike | None, settings: pb.GenerateRequest
    ) -> pb.GenerateRequest:
        """A generation on this session, from ``settings`` (see ``generation_settings``)."""
        return aim_generation(
            settings, session_id=self.session_id, prompt=prompt, vocabulary=self._model.vocabulary
        )

    # -- tracking (replies, failures, and calls that step the session out of sight) -------------

    def _stepped(self, response: pb.StepResponse, request: pb.StepRequest) -> StepOutput:
        result = decode_result(response.result)
        self._replay.answered(
            request.expected_step_count,
            request.input,
            result.step_count,
            result.durable_step_count,
        )
        self._step_count = result.step_count
        return result

    # -- failover (what feed does when the session's process died and another took it over) -----

    def _may_have_failed_over(self, error: RnnServeError) -> bool:
        """Whether a refused Step may mean the session fell back to its durable step count on
        another process: the server says it is at another step count, and it reports
        durability (with the in-memory store the error means what it says)."""
        if not self._replay.tracking:
            return False
        # UNAVAILABLE after the retries: the proxy has not yet moved the session to a survivor,
        # or the dead owner's lease has not yet lapsed.
        return error.code == UNAVAILABLE or (
            error.code == grpc.StatusCode.ABORTED and error.field == "expected_step_count"
        )

    def _session_call_wait(self, failure: RnnServeError, attempt: int, started: float) -> float:
        """Seconds to wait before trying an idempotent call of this session again: only while
        the server reports durability (a failover may be in progress); else raises `failure`."""
        if not self._replay.tracking:
            raise failure
        return failover_wait(failure, attempt, started)

    def _failover_wait(self, failure: RnnServeError, attempt: int, started: float) -> float:
        """Seconds to wait before trying a failed-over step again (see `failover_wait`); marks
        the step count uncertain when it gives up."""
        try:
            return failover_wait(unanswered(failure, self._resent_ahead), attempt, started)
        except RnnServeError:
            self._step_count = None
            raise

    def _replays(
        self, request: pb.StepRequest, server_step_count: int, error: RnnServeError
    ) -> list[pb.StepRequest]:
        """The Step requests that bring the server from `server_step_count` back to where
        `request` expects it; raises `error` when the server refused the step for being ahead
        (another client stepped the session), and DataLoss when it is ahead after a lost reply
        or behind by inputs that are not kept."""
        self._resent_ahead = False
        if server_step_count > request.expected_step_count:
            if error.code != UNAVAILABLE:
                raise error
            # The step ran and its reply was lost with the process: sent again, the server
            # answers it from the reply it keeps with the state (or DataLoss, `_failover_wait`).
            self._resent_ahead = True
            return []
        plan = self._replay.plan(server_step_count, request.expected_step_count)
        return [
            pb.StepRequest(
                session_id=self.session_id,
                input=item.step,
                output=REPLAY_OUTPUT,
                expected_step_count=item.start,
            )
            for item in plan
        ]

    def _step_failed(self, error: RnnServeError) -> None:
        if error.code in UNCERTAIN_CODES:
            self._step_count = None

    def _described(self, session: pb.SessionInfo) -> SessionInfo:
        self._info = decode_session(session)
        self._step_count = self._info.step_count
        self._replay.tracking = self._info.durable_step_count is not None
        return self._info

    def _stepping_out_of_sight(self) -> None:
        # A stream or generation steps the session as it goes: the count is only certain again
        # once it reports how it ended (and the kept inputs no longer lead to it).
        self._step_count = None
        self._replay.clear()

    def _track_output(self, result: StepOutput | None) -> None:
        self._step_count = result.step_count if result is not None else None

    def _track_step_count(self, step_count: int | None) -> None:
        self._step_count = step_count

    def _track_generation(self, last: GeneratedToken | None) -> None:
        self._step_count = last.step_count if last is not None else None
