"""Sessions: TTL, capacity, close, ownership, one step at a time, cancellation, deadlines, queue."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, Gate, feed, tokens, twin_session
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import (
    CapacityExceeded,
    DeadlineExceeded,
    Overloaded,
    SessionBusy,
    SessionNotFound,
    ShuttingDown,
)
from rnnserve.server.manifest import StateSpec
from rnnserve.server.sessions import SessionManager
from rnnserve.server.state_store import StateStore

PREFIX = tokens(30, 4)
NEXT = tokens(31, 1)


async def test_idle_session_expires_and_says_so(make_engine: Any) -> None:
    engine = await make_engine(session_ttl_s=0.2)
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    await asyncio.sleep(0.45)  # the reaper (every ttl/4) removes it
    assert len(engine.sessions) == 0
    with pytest.raises(SessionNotFound) as caught:
        await engine.step(session, ME, NEXT, OutputOptions())
    assert caught.value.reason == "expired" and "expired" in caught.value.message


async def test_activity_keeps_a_session_alive(make_engine: Any) -> None:
    engine = await make_engine(session_ttl_s=0.3)
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    for _ in range(5):
        await asyncio.sleep(0.1)
        await feed(engine, session, NEXT)
    assert (await engine.get_session(session, ME)).step_count == 5


async def test_capacity_is_enforced(make_engine: Any) -> None:
    engine = await make_engine(max_sessions=2)
    await engine.create_session(tm.RNN_LM, 0, ME)
    second = (await engine.create_session(tm.GRU_LM, 0, ME)).session_id
    with pytest.raises(CapacityExceeded, match="maximum of 2"):
        await engine.create_session(tm.RNN_LM, 0, ME)
    await engine.close_session(second, ME)
    await engine.create_session(tm.RNN_LM, 0, ME)


def test_capacity_reclaims_an_expired_session_first() -> None:
    now = [100.0]
    spec = StateSpec(input_name="h0", output_name="hn", shape=[1, 4])
    stores = {("m", 1): StateStore([spec], capacity=1)}
    manager = SessionManager(stores, ttl_s=10, max_sessions=2, clock=lambda: now[0])
    old = manager.create("m", 1, ME)
    now[0] += 5
    young = manager.create("m", 1, ME)
    with pytest.raises(CapacityExceeded):
        manager.create("m", 1, ME)
    now[0] += 6  # `old` is now idle for 11 s > ttl; `young` for 6 s
    fresh = manager.create("m", 1, ME)
    assert manager.get(young.session_id, ME) is young
    with pytest.raises(SessionNotFound) as caught:
        manager.get(old.session_id, ME)
    assert caught.value.reason == "expired"
    assert fresh.slot == old.slot  # the freed slot is reused
    assert stores[("m", 1)].used == 2


async def test_closed_session_says_closed(engine: InferenceEngine) -> None:
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    view = await engine.close_session(session, ME)
    assert view.session_id == session
    for call in (
        engine.get_session(session, ME),
        engine.step(session, ME, NEXT, OutputOptions()),
        engine.close_session(session, ME),
    ):
        with pytest.raises(SessionNotFound) as caught:
            await call
        assert caught.value.reason == "closed"
    with pytest.raises(SessionNotFound) as caught:
        await engine.get_session("never-existed", ME)
    assert caught.value.reason is None and caught.value.message.endswith("not found")


async def test_another_identity_finds_no_session(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    for call in (
        engine.step(session, "mallory", NEXT, OutputOptions()),
        engine.close_session(session, "mallory"),
        engine.export_state(session, "mallory"),
        engine.reset_session(session, "mallory"),
    ):
        with pytest.raises(SessionNotFound) as caught:
            await call
        assert caught.value.reason is None
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)


async def test_concurrent_step_on_one_session_is_refused(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    twin = await twin_session(engine, tm.RNN_LM, PREFIX)
    gate = Gate(engine, tm.RNN_LM)
    first = asyncio.create_task(engine.step(session, ME, NEXT, OutputOptions()))
    await gate.wait_entered()
    with pytest.raises(SessionBusy, match="already running"):
        await engine.step(session, ME, NEXT, OutputOptions())
    with pytest.raises(SessionBusy):
        await engine.reset_session(session, ME)
    gate.open()
    await first
    await feed(engine, twin, NEXT)  # the twin takes the one step that was accepted
    # the refused steps changed nothing
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX) + 1
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))


async def test_out_of_order_step_is_refused(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    with pytest.raises(SessionBusy, match="out of order") as caught:
        await engine.step(session, ME, NEXT, OutputOptions(), expected_step_count=2)
    assert caught.value.field == "expected_step_count"
    outcome = await engine.step(session, ME, NEXT, OutputOptions(), expected_step_count=4)
    assert outcome.step_count == 5


@pytest.mark.parametrize("where", ["queued", "running"])
async def test_cancelled_step_leaves_state_unchanged(engine: InferenceEngine, where: str) -> None:
    session = await twin_session(engine, tm.LSTM_LM, PREFIX)
    twin = await twin_session(engine, tm.LSTM_LM, PREFIX)
    gate = Gate(engine, tm.LSTM_LM)
    blocker_session = (await engine.create_session(tm.LSTM_LM, 0, ME)).session_id
    if where == "queued":  # another session's call occupies the worker; ours waits in the queue
        blocker = asyncio.create_task(engine.step(blocker_session, ME, NEXT, OutputOptions()))
        await gate.wait_entered()
    task = asyncio.create_task(engine.step(session, ME, tokens(32, 3), OutputOptions()))
    if where == "running":
        await gate.wait_entered()
    else:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.open()
    if where == "queued":
        await blocker
    await asyncio.sleep(0.01)
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))


async def test_cancel_after_commit_rolls_the_state_back(engine: InferenceEngine) -> None:
    """The race where the result is committed but the awaiting task is cancelled before resuming."""
    session_id = await twin_session(engine, tm.GRU_LM, PREFIX)
    twin = await twin_session(engine, tm.GRU_LM, PREFIX)
    served = engine.registry.served((tm.GRU_LM, 1))
    session = engine.sessions.get(session_id, ME)
    request = served.scheduler.submit(tokens(33, 2), session.slot)
    await asyncio.wait({request.future})
    assert request.committed
    served.scheduler.abandon(request)  # what the engine does when cancelled at this point
    np.testing.assert_array_equal(
        await feed(engine, session_id, NEXT), await feed(engine, twin, NEXT)
    )


async def test_deadline_passing_in_the_queue_drops_the_step(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    twin = await twin_session(engine, tm.RNN_LM, PREFIX)
    other = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    gate = Gate(engine, tm.RNN_LM)
    blocker = asyncio.create_task(engine.step(other, ME, NEXT, OutputOptions()))
    await gate.wait_entered()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="queued"):
        await engine.step(session, ME, NEXT, OutputOptions(), deadline=started + 0.05)
    assert time.monotonic() - started < 1.0  # answered at the deadline, not when the worker frees
    gate.open()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await engine.step(session, ME, NEXT, OutputOptions(), deadline=time.monotonic() - 1)
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))


async def test_queued_deadlines_each_expire_on_time_whatever_their_order(
    engine: InferenceEngine,
) -> None:
    # one timer serves the whole queue: a later deadline queued first, an earlier one after it,
    # and a step without a deadline; each deadline fails its own step when it comes, and the
    # step without one runs once the model is free
    late, early, patient = [await twin_session(engine, tm.RNN_LM, PREFIX) for _ in range(3)]
    other = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    gate = Gate(engine, tm.RNN_LM)
    blocker = asyncio.create_task(engine.step(other, ME, NEXT, OutputOptions()))
    await gate.wait_entered()
    started = time.monotonic()

    async def failing_at(session: str, deadline_s: float) -> float:
        with pytest.raises(DeadlineExceeded, match="queued"):
            await engine.step(session, ME, NEXT, OutputOptions(), deadline=started + deadline_s)
        return time.monotonic() - started

    late_task = asyncio.create_task(failing_at(late, 0.4))
    await asyncio.sleep(0)
    early_task = asyncio.create_task(failing_at(early, 0.05))
    patient_task = asyncio.create_task(engine.step(patient, ME, NEXT, OutputOptions()))
    early_at = await asyncio.wait_for(early_task, 5)
    assert 0.05 <= early_at < 0.35  # not held until the later deadline
    assert not late_task.done()
    assert 0.4 <= await asyncio.wait_for(late_task, 5) < 2.0
    assert not patient_task.done()
    gate.open()
    await blocker
    assert (await patient_task).step_count == len(PREFIX) + 1
    for session in (late, early):
        assert (await engine.get_session(session, ME)).step_count == len(PREFIX)


async def test_deadline_passing_while_the_step_runs_commits_nothing(
    engine: InferenceEngine,
) -> None:
    session = await twin_session(engine, tm.RNN_LM, PREFIX)
    twin = await twin_session(engine, tm.RNN_LM, PREFIX)
    gate = Gate(engine, tm.RNN_LM)
    step = asyncio.create_task(
        engine.step(session, ME, NEXT, OutputOptions(), deadline=time.monotonic() + 0.05)
    )
    await gate.wait_entered()
    await asyncio.sleep(0.1)  # the caller's deadline passes while onnxruntime still runs
    gate.open()
    with pytest.raises(DeadlineExceeded, match="ran"):
        await step
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))


async def test_full_queue_answers_overloaded_with_a_retry_hint(make_engine: Any) -> None:
    engine = await make_engine(max_queue=1)
    sessions = [(await engine.create_session(tm.RNN_LM, 0, ME)).session_id for _ in range(3)]
    gate = Gate(engine, tm.RNN_LM)
    running = asyncio.create_task(engine.step(sessions[0], ME, NEXT, OutputOptions()))
    await gate.wait_entered()
    queued = asyncio.create_task(engine.step(sessions[1], ME, NEXT, OutputOptions()))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as caught:
        await engine.step(sessions[2], ME, NEXT, OutputOptions())
    assert caught.value.retry_after_s > 0
    gate.open()
    await asyncio.gather(running, queued)
    assert (await engine.get_session(sessions[2], ME)).step_count == 0


async def test_reset_goes_back_to_the_initial_state(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.LSTM_LM, PREFIX)
    fresh = (await engine.create_session(tm.LSTM_LM, 0, ME)).session_id
    view = await engine.reset_session(session, ME)
    assert view.step_count == 0
    np.testing.assert_array_equal(
        await feed(engine, session, NEXT), await feed(engine, fresh, NEXT)
    )


async def test_stop_refuses_new_work(make_engine: Any) -> None:
    engine = await make_engine()
    session = (await engine.create_session(tm.RNN_LM, 0, ME)).session_id
    assert engine.ready
    await engine.stop(0.1)
    assert not engine.ready
    with pytest.raises(ShuttingDown):
        await engine.step(session, ME, NEXT, OutputOptions())


async def test_cancelling_a_long_message_between_segments_keeps_state(
    engine: InferenceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await twin_session(engine, tm.LSTM_LM, PREFIX)
    twin = await twin_session(engine, tm.LSTM_LM, PREFIX)
    served = engine.registry.served((tm.LSTM_LM, 2))
    monkeypatch.setattr(served.scheduler, "max_steps_per_call", 2)
    gate = Gate(engine, tm.LSTM_LM, let_through=2)  # two segments run, the third blocks
    task = asyncio.create_task(engine.step(session, ME, tokens(34, 9), OutputOptions()))
    await gate.wait_entered()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert (await engine.get_session(session, ME)).step_count == len(PREFIX)
    np.testing.assert_array_equal(await feed(engine, session, NEXT), await feed(engine, twin, NEXT))
