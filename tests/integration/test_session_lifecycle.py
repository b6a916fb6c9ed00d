"""Sessions over gRPC: TTL expiry, eviction, capacity, close and reset, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import (
    Running,
    assert_same_next_step,
    expect_error,
    hold_model,
    identity,
    open_session,
    output_array,
    step,
    tokens,
)
from tiny_models import GRU_LM, LSTM_LM

ALICE = identity("alice")


async def _get(running: Running, session_id: str) -> pb.SessionInfo:
    reply = await running.stub.GetSession(
        pb.GetSessionRequest(session_id=session_id), metadata=ALICE
    )
    return reply.session


async def test_session_info(rpc: Running) -> None:
    before = time.time()
    a = await open_session(rpc.stub, LSTM_LM)
    await step(rpc.stub, a, tokens([1, 2, 3]))
    info = await _get(rpc, a)
    assert (info.model, info.version, info.step_count) == (LSTM_LM, 2, 3)
    assert before - 1 <= info.created_at <= time.time()
    assert info.expires_at == pytest.approx(time.time() + 600, abs=5)
    assert info.state_bytes == 2 * 2 * 12 * 4  # h and c, [2 layers, 12 hidden] float32


async def test_idle_session_expires(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(session_ttl_s=0.3)
    idle = await open_session(running.stub, GRU_LM)
    busy = await open_session(running.stub, GRU_LM)
    for _ in range(6):  # activity keeps `busy` alive well past one TTL
        await asyncio.sleep(0.1)
        await step(running.stub, busy, tokens([1]))
    err = await expect_error(step(running.stub, idle, tokens([1])))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (err.details() or "").startswith("session_id: ")
    assert "expired" in (err.details() or "")
    assert (await _get(running, busy)).step_count == 6


async def test_capacity_reclaims_an_expired_session(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(max_sessions=1, session_ttl_s=0.2)
    first = await open_session(running.stub, GRU_LM)
    err = await expect_error(open_session(running.stub, GRU_LM))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await asyncio.sleep(0.35)
    second = await open_session(running.stub, GRU_LM)  # the expired one made room
    assert second != first
    err = await expect_error(step(running.stub, first, tokens([1])))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "expired" in (err.details() or "")


async def test_evicted_session_says_so(rpc: Running) -> None:
    a = await open_session(rpc.stub, GRU_LM)
    # The core evicts only under its own policies; evict directly to check what a client sees.
    sessions = rpc.server.engine.sessions
    sessions.remove(sessions.get(a, "alice"), "evicted")
    err = await expect_error(step(rpc.stub, a, tokens([1])))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "evicted" in (err.details() or "")


async def test_stream_controls_reset_snapshot_close(rpc: Running) -> None:
    fresh = await open_session(rpc.stub, LSTM_LM)
    snapshot_holder: list[bytes] = []

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(
            request_id="open", open=pb.OpenSession(model=pb.ModelRef(name=LSTM_LM))
        )
        yield pb.StreamRequest(request_id="feed", step=tokens([3, 1, 4, 1, 5]))
        yield pb.StreamRequest(request_id="snap", control=pb.CONTROL_ACTION_SNAPSHOT)
        yield pb.StreamRequest(request_id="reset", control=pb.CONTROL_ACTION_RESET)
        yield pb.StreamRequest(request_id="after-reset", step=tokens([9]))
        yield pb.StreamRequest(request_id="close", control=pb.CONTROL_ACTION_CLOSE)
        yield pb.StreamRequest(request_id="too-late", step=tokens([9]))

    replies = [r async for r in rpc.stub.Stream(requests(), metadata=ALICE)]
    by_id = {r.request_id: r for r in replies}
    assert [r.request_id for r in replies] == [
        "open",
        "feed",
        "snap",
        "reset",
        "after-reset",
        "close",
    ]
    assert by_id["feed"].result.step_count == 5
    snapshot_holder.append(by_id["snap"].snapshot)
    assert by_id["reset"].session.step_count == 0
    expected = await step(rpc.stub, fresh, tokens([9]))  # reset == a brand-new session
    assert by_id["after-reset"].result.step_count == 1
    assert (
        by_id["after-reset"].result.outputs[0].tensor.raw_data
        == expected.outputs[0].tensor.raw_data
    )
    closed_id = by_id["close"].session.session_id
    err = await expect_error(step(rpc.stub, closed_id, tokens([1])))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "closed" in (err.details() or "")
    # The snapshot taken on the stream resumes where it was taken.
    imported = await rpc.stub.ImportState(
        pb.ImportStateRequest(snapshot=snapshot_holder[0]), metadata=ALICE
    )
    assert imported.session.step_count == 5
    twin = await open_session(rpc.stub, LSTM_LM)
    await step(rpc.stub, twin, tokens([3, 1, 4, 1, 5]))
    await assert_same_next_step(rpc.stub, imported.session.session_id, twin, tokens([2, 7]))


async def test_stream_resumes_a_session_by_id(rpc: Running) -> None:
    a = await open_session(rpc.stub, GRU_LM)
    await step(rpc.stub, a, tokens([1, 2]))

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(open=pb.OpenSession(session_id=a))
        yield pb.StreamRequest(step=tokens([3]))

    replies = [r async for r in rpc.stub.Stream(requests(), metadata=ALICE)]
    assert replies[0].session.session_id == a and replies[0].session.step_count == 2
    assert replies[1].result.step_count == 3
    denied = [r async for r in rpc.stub.Stream(requests(), metadata=identity("mallory"))]
    assert denied[0].error.code_name == "NOT_FOUND"
    assert denied[0].error.field == "open.session_id"


async def _wait(event: threading.Event) -> None:
    for _ in range(200):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the step never reached onnxruntime")


async def test_cancelled_step_leaves_the_state_untouched(rpc: Running) -> None:
    a, twin = await open_session(rpc.stub, LSTM_LM), await open_session(rpc.stub, LSTM_LM)
    for session_id in (a, twin):
        await step(rpc.stub, session_id, tokens([1, 2, 3]))
    with hold_model(rpc, LSTM_LM) as hold:
        call = rpc.stub.Step(pb.StepRequest(session_id=a, input=tokens([4, 5])), metadata=ALICE)
        await _wait(hold.entered)  # the step is inside its onnxruntime call now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.05)
        hold.release.set()
    await asyncio.sleep(0.05)
    assert (await _get(rpc, a)).step_count == 3
    await assert_same_next_step(rpc.stub, a, twin, tokens([6]))  # not busy, not advanced


async def test_deadline_leaves_the_state_untouched(rpc: Running) -> None:
    a, twin = await open_session(rpc.stub, LSTM_LM), await open_session(rpc.stub, LSTM_LM)
    with hold_model(rpc, LSTM_LM) as hold:
        err = await expect_error(
            rpc.stub.Step(
                pb.StepRequest(session_id=a, input=tokens([4])), metadata=ALICE, timeout=0.2
            )
        )
        assert hold.entered.is_set()
        hold.release.set()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.05)
    assert (await _get(rpc, a)).step_count == 0
    await assert_same_next_step(rpc.stub, a, twin, tokens([6]))


async def test_cancelled_generation_stops_promptly(rpc: Running) -> None:
    a = await open_session(rpc.stub, LSTM_LM)
    generation = rpc.stub.Generate(
        pb.GenerateRequest(session_id=a, text="ab", max_tokens=4000), metadata=ALICE
    )
    received = [await generation.read() for _ in range(3)]
    assert [r.index for r in received] == [0, 1, 2]
    generation.cancel()
    await asyncio.sleep(0.1)
    settled = (await _get(rpc, a)).step_count
    await asyncio.sleep(0.2)
    assert (await _get(rpc, a)).step_count == settled  # nothing runs any more
    assert 2 + 3 <= settled < 2 + 4000
    # The session is free again and continues from where generation stopped.
    result = await step(rpc.stub, a, tokens([1]))
    assert result.step_count == settled + 1
    assert output_array(result).shape == (1, 20)
