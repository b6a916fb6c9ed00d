"""rnnserve-load's stream end: CLOSE and the half-close together, and a write that meets an
ended call counted by the call's status, never raised (it crashed the run through a proxy)."""

from __future__ import annotations

from typing import Any

import grpc
from grpc._cython import cygrpc
from rnnserve.client.load.config import LoadConfig
from rnnserve.client.load.drivers import RunContext, StreamDriver, _close_stream
from rnnserve.client.load.inputs import InputFactory, ModelShape
from rnnserve.client.load.pacing import Bounds, Pacer
from rnnserve.client.load.stats import Recorder
from rnnserve.v1 import rnnserve_pb2 as pb


class _EndedCall:
    """A Stream call whose end arrived under the client: writes fail as grpc.aio's do."""

    def __init__(self, replies: list[Any], fail_half_close: bool) -> None:
        self.sent: list[Any] = []
        self.replies = replies
        self.fail_half_close = fail_half_close
        self.cancelled = False

    async def write(self, request: pb.StreamRequest) -> None:
        self.sent.append(request)

    async def done_writing(self) -> None:
        self.sent.append("half-close")
        if self.fail_half_close:
            raise cygrpc.ExecuteBatchError('Failed "execute_batch"')

    async def read(self) -> Any:
        return self.replies.pop(0)

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED if self.cancelled else grpc.StatusCode.OK


async def test_close_and_half_close_go_out_before_the_reply_is_read() -> None:
    recorder = Recorder()
    call = _EndedCall([pb.StreamResponse(session=pb.SessionInfo()), grpc.aio.EOF], False)
    await _close_stream(call, recorder)
    assert [type(x).__name__ if x != "half-close" else x for x in call.sent] == [
        "StreamRequest",
        "half-close",
    ]
    assert call.sent[0].control == pb.CONTROL_ACTION_CLOSE
    assert not recorder.codes


async def test_a_failed_half_close_is_counted_by_the_calls_status_not_raised() -> None:
    config = LoadConfig(model="m", steps=2)
    recorder = Recorder()
    inputs = InputFactory(ModelShape("tokens", 10, 1, 8, True), seed=0)
    ctx = RunContext(config, inputs, recorder, Bounds(deadline=None, messages=None, sessions=1), 8)
    step = pb.StreamResponse(result=pb.StepResult(steps=1))
    call = _EndedCall([pb.StreamResponse(session=pb.SessionInfo()), step, step], True)

    class _Stub:
        def Stream(self, **_: object) -> _EndedCall:
            return call

    await StreamDriver(ctx).run_session(_Stub(), Pacer(None, 0.0, 0.0))  # type: ignore[arg-type]
    assert recorder.codes == {"OK": 2, "CANCELLED": 1}
    assert recorder.sessions_done == 1
