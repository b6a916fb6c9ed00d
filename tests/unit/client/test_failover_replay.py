"""Failover replay: a session that falls back to its durable step count on another process is
brought back by the client library, and the outputs equal an uninterrupted run's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from client_fakes import MODEL, FakeError, _abort, _model_info
from rnnserve.client import AsyncClient, Client, DataLoss
from rnnserve.client._errors import Aborted
from rnnserve.client._replay import ReplayLog
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

INPUTS = [[1], [2, 3], [4], [5, 6, 7], [8], [9], [1, 2], [3]]


@dataclass
class TierSession:
    inputs: list[int] = field(default_factory=list)  # every token applied, in order
    durable: int = 0
    messages: int = 0
    last: tuple[int, list[int], pb.StepResponse] | None = None  # the last message and its reply


class StateTierFake(rnnserve_pb2_grpc.InferenceServiceServicer):
    """A server process over a shared state tier, as the client sees it across a failover.

    Steps become durable every `batch` messages (durability `batch`); `durable=None` is the
    in-memory store (no durable count reported). The output of each step is a function of the
    whole history, so a state that missed or repeated a step shows in every later output.
    `fail_over` is the process dying: the session falls back to its durable count (what the
    survivor loads), and the next call in flight fails UNAVAILABLE.
    """

    def __init__(self, batch: int | None) -> None:
        self.batch = batch
        self.sessions: dict[str, TierSession] = {}
        self.unavailable = 0
        self.lose_reply = False
        self.keeps_replies = False  # answers a lost reply's retry again, as the real tier does
        self.unavailable_after_loss = 0
        self.requests: list[pb.StepRequest] = []
        self.lock = threading.Lock()

    def fail_over(
        self, session_id: str, fall_back_to: int | None = None, unavailable: int = 1
    ) -> None:
        session = self.sessions[session_id]
        keep = session.durable if fall_back_to is None else fall_back_to
        session.inputs = session.inputs[:keep]
        self.unavailable = unavailable

    def _info(self, session_id: str) -> pb.SessionInfo:
        session = self.sessions[session_id]
        info = pb.SessionInfo(session_id=session_id, model=MODEL, version=2)
        info.step_count = len(session.inputs)
        if self.batch is not None:
            info.durable_step_count = session.durable
        return info

    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=_model_info(MODEL))

    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        with self.lock:
            session_id = f"s{len(self.sessions)}"
            self.sessions[session_id] = TierSession()
        return pb.CreateSessionResponse(session=self._info(session_id))

    def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(session=self._info(request.session_id))

    def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.ServicerContext
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse()

    def Step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepResponse:
        if self.unavailable:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the backend went away")
        if self.lose_reply:  # the step is applied, then the process dies before replying
            self.lose_reply = False
            self.Step(request, context)
            self.unavailable = self.unavailable_after_loss  # the move takes this many tries
            context.abort(grpc.StatusCode.UNAVAILABLE, "the backend went away")
        self.requests.append(request)
        session = self.sessions[request.session_id]
        ids = list(request.input.tokens.ids)
        sent_again = session.last is not None and session.last[:2] == (
            request.expected_step_count,
            ids,
        )
        if self.keeps_replies and sent_again:
            assert session.last is not None
            return session.last[2]
        if request.expected_step_count != len(session.inputs):
            _abort(
                context,
                FakeError(
                    grpc.StatusCode.ABORTED,
                    f"out of order: expects {request.expected_step_count}, "
                    f"at {len(session.inputs)}",
                    "expected_step_count",
                ),
            )
        response = pb.StepResponse()
        result = response.result
        values = []
        for token in request.input.tokens.ids:
            session.inputs.append(token)
            values.append(sum((i + 1) * t for i, t in enumerate(session.inputs)))
        if request.output.format != pb.OUTPUT_FORMAT_NONE:
            rows = np.asarray(values, dtype="<f4").reshape(-1, 1)
            result.outputs.add(
                name="logits",
                tensor=pb.Tensor(
                    dtype=pb.DATA_TYPE_FLOAT32, shape=list(rows.shape), raw_data=rows.tobytes()
                ),
            )
        result.steps = len(request.input.tokens.ids)
        result.step_count = len(session.inputs)
        session.messages += 1
        if self.batch is not None:
            if session.messages % self.batch == 0:  # a message's steps commit together
                session.durable = len(session.inputs)
            result.durable_step_count = session.durable
        session.last = (result.step_count - result.steps, ids, response)
        return response


@pytest.fixture
def tier() -> Iterator[tuple[StateTierFake, str]]:
    yield from _serve(StateTierFake(batch=3))  # type: ignore[abstract]  # unused methods


def _serve(fake: StateTierFake) -> Iterator[tuple[StateTierFake, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    rnnserve_pb2_grpc.add_InferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _outputs(client: Client, fail_after: int | None, fake: StateTierFake) -> list[list[float]]:
    outputs = []
    with client.session(MODEL) as session:
        for index, data in enumerate(INPUTS):
            if index == fail_after:
                fake.fail_over(session.session_id)
            out = session.feed(data)
            outputs.append([float(v) for v in out.tensor.ravel()])  # type: ignore[union-attr]
    return outputs


def test_batch_durability_failover_replays_to_identical_outputs(
    tier: tuple[StateTierFake, str],
) -> None:
    fake, address = tier
    with Client(address, timeout=5) as client:
        reference = _outputs(client, None, fake)
        fake.requests.clear()
        recovered = _outputs(client, 5, fake)
    assert recovered == reference
    replays = [r for r in fake.requests if r.output.format == pb.OUTPUT_FORMAT_NONE]
    assert all(r.output.steps == pb.OUTPUT_STEPS_LAST for r in replays)


@pytest.mark.parametrize("fail_after", range(1, len(INPUTS)))
def test_a_failover_before_any_message_gives_the_reference_outputs(
    tier: tuple[StateTierFake, str], fail_after: int
) -> None:
    fake, address = tier
    with Client(address, timeout=5) as client:
        reference = _outputs(client, None, fake)
        fake.requests.clear()
        assert _outputs(client, fail_after, fake) == reference
    durable_messages = fail_after // 3 * 3
    lost = sum(len(d) for d in INPUTS[durable_messages:fail_after])
    replayed = [r for r in fake.requests if r.output.format == pb.OUTPUT_FORMAT_NONE]
    assert sum(len(r.input.tokens.ids) for r in replayed) == lost


async def test_the_async_session_replays_the_same_way(tier: tuple[StateTierFake, str]) -> None:
    fake, address = tier
    with Client(address, timeout=5) as client:
        reference = _outputs(client, None, fake)
    async with (
        AsyncClient(address, timeout=5) as async_client,
        async_client.session(MODEL) as session,
    ):
        outputs = []
        for index, data in enumerate(INPUTS):
            if index == 4:
                fake.fail_over(session.session_id)
            out = await session.feed(data)
            assert out.tensor is not None
            outputs.append([float(v) for v in out.tensor.ravel()])
    assert outputs == reference


def test_a_fall_back_past_the_kept_inputs_is_data_loss(tier: tuple[StateTierFake, str]) -> None:
    fake, address = tier
    with Client(address, timeout=5) as client, client.session(MODEL) as session:
        for data in INPUTS[:4]:  # 7 steps, durable 4 (after 3 messages)
            session.feed(data)
        fake.fail_over(session.session_id, fall_back_to=2)  # less than it said was durable
        with pytest.raises(DataLoss) as caught:
            session.feed([1])
        assert caught.value.field == "expected_step_count"
        assert session.step_count is None  # uncertain: the next feed asks the server first


def test_without_durability_the_client_keeps_nothing_and_replays_nothing() -> None:
    for fake, address in _serve(StateTierFake(batch=None)):  # type: ignore[abstract]
        with Client(address, timeout=5) as client, client.session(MODEL) as session:
            for data in INPUTS[:3]:
                session.feed(data)
            assert len(session._replay) == 0
            fake.fail_over(session.session_id, fall_back_to=1)
            with pytest.raises(Aborted):
                session.feed([1])


def test_the_replay_log_keeps_only_steps_beyond_the_durable_count() -> None:
    log = ReplayLog()
    step = pb.StepInput(tokens=pb.TokenIds(ids=[1]))
    log.answered(0, step, 1, 0)
    log.answered(1, step, 2, 0)
    log.answered(2, step, 3, 3)
    assert len(log) == 0
    log.answered(3, step, 4, 3)
    log.answered(4, step, 6, 3)
    assert log.kept_steps == 3
    assert [(k.start, k.end) for k in log.plan(3, 6)] == [(3, 4), (4, 6)]
    assert [(k.start, k.end) for k in log.plan(4, 6)] == [(4, 6)]
    assert log.plan(6, 6) == []
    with pytest.raises(DataLoss):
        log.plan(2, 6)  # behind what is kept
    with pytest.raises(DataLoss):
        log.plan(7, 6)  # ahead: a step ran whose reply was lost
    log.answered(9, step, 10, 3)  # stepped out of sight in between: older inputs are moot
    assert [(k.start, k.end) for k in log.plan(9, 10)] == [(9, 10)]


def test_a_longer_move_is_waited_for_past_the_usual_retries(
    tier: tuple[StateTierFake, str],
) -> None:
    # The proxy's health check and the dead owner's lease take seconds: more UNAVAILABLE
    # answers than the client's retry policy allows (4 tries) must not fail the step.
    fake, address = tier
    with Client(address, timeout=5) as client:
        reference = _outputs(client, None, fake)
        with client.session(MODEL) as session:
            outputs = []
            for index, data in enumerate(INPUTS):
                if index == 4:
                    fake.fail_over(session.session_id, unavailable=12)
                out = session.feed(data)
                assert out.tensor is not None
                outputs.append([float(v) for v in out.tensor.ravel()])
    assert fake.unavailable == 0
    assert outputs == reference


def test_a_step_whose_reply_was_lost_fails_and_is_never_applied_twice(
    tier: tuple[StateTierFake, str],
) -> None:
    # Applied, then the process died before replying: the retry finds the session one step
    # ahead. Its outputs cannot be had again, so the step fails (as when another client stepped
    # the session); what matters is that it did not run a second time.
    fake, address = tier
    with Client(address, timeout=5) as client, client.session(MODEL) as session:
        session.feed([1])
        fake.lose_reply = True
        with pytest.raises(Aborted):
            session.feed([2])
        assert session.describe().step_count == 2  # applied once, never twice


@pytest.mark.parametrize("move_tries", [0, 12], ids=["quick move", "long move"])
def test_a_step_whose_reply_was_lost_is_answered_again_by_a_server_that_keeps_it(
    tier: tuple[StateTierFake, str], move_tries: int
) -> None:
    """As the state tier does: the retry at the step count the message was sent at gets the
    reply the client never saw; the outputs are an uninterrupted run's, the step ran once. A
    long move outlasts the usual retries: the failover path sends it again."""
    fake, address = tier
    fake.keeps_replies = True
    fake.unavailable_after_loss = move_tries
    with Client(address, timeout=5) as client:
        reference = _outputs(client, None, fake)
        outputs = []
        with client.session(MODEL) as session:
            for index, data in enumerate(INPUTS):
                fake.lose_reply = index in (2, 5)
                out = session.feed(data)
                assert out.tensor is not None
                outputs.append([float(v) for v in out.tensor.ravel()])
            assert session.describe().step_count == sum(map(len, INPUTS))  # each step once
    assert outputs == reference


def test_a_lost_reply_the_server_cannot_answer_again_after_a_move_is_data_loss(
    tier: tuple[StateTierFake, str],
) -> None:
    fake, address = tier
    fake.unavailable_after_loss = 12  # past the usual retries: the failover path takes over
    with Client(address, timeout=5) as client, client.session(MODEL) as session:
        session.feed([1])
        fake.lose_reply = True
        with pytest.raises(DataLoss, match="reply was lost"):
            session.feed([2])
        assert session.describe().step_count == 2  # applied once, never twice
