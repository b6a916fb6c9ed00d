"""A big stateless Predict does not hold up a streaming session for all of its rows."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import tiny_models as tm
from helpers_core import ME, Gate, feed, tokens, twin_session
from rnnserve.server.domain import OutputOptions


async def test_a_session_step_runs_right_after_the_call_in_flight(
    make_engine: Any,
) -> None:
    engine = await make_engine(max_batch_size=8)
    session = (await engine.create_session(tm.GRU_LM, 0, ME)).session_id
    prefix = tokens(1, 4)
    await feed(engine, session, prefix)
    gate = Gate(engine, tm.GRU_LM)
    calls: list[tuple[int, int]] = []  # (rows, steps) of each model call, in order
    gated = gate.model.run

    def recording(inputs: np.ndarray, states: object) -> object:  # type: ignore[type-arg]
        calls.append((int(inputs.shape[0]), int(inputs.shape[1])))
        return gated(inputs, states)  # type: ignore[operator]

    gate.model.run = recording  # type: ignore[method-assign]
    sequences = [tokens(100 + i, 3) for i in range(40)]  # 5 batches of 8 rows, 3 steps each
    predict = asyncio.ensure_future(engine.predict(tm.GRU_LM, 0, list(sequences), OutputOptions()))
    await gate.wait_entered()  # the first 8 rows are in the model, 32 wait
    step = asyncio.ensure_future(feed(engine, session, np.array([7], dtype=np.int64)))
    await asyncio.sleep(0.05)  # the step is queued behind the Predict's remaining rows
    gate.open()
    outputs = await step
    results = await predict
    # The step (the only 1-step call) ran second: after the batch in flight, not after all 40 rows.
    assert [steps for _, steps in calls].index(1) == 1
    assert calls[0] == (8, 3) and sum(rows for rows, steps in calls if steps == 3) == 40
    twin = await twin_session(engine, tm.GRU_LM, prefix)
    np.testing.assert_array_equal(outputs, await feed(engine, twin, np.array([7], np.int64)))
    # Every Predict row still got its own whole-sequence result.
    alone = await engine.predict(tm.GRU_LM, 0, [sequences[-1]], OutputOptions())
    np.testing.assert_allclose(results[-1].outputs[0].tensor, alone[0].outputs[0].tensor, atol=1e-6)
    assert len(results) == 40


async def test_stateless_rows_keep_a_share_of_every_batch(make_engine: Any) -> None:
    engine = await make_engine(max_batch_size=8)
    sessions = [(await engine.create_session(tm.GRU_LM, 0, ME)).session_id for _ in range(16)]
    gate = Gate(engine, tm.GRU_LM)
    calls: list[tuple[int, int]] = []
    gated = gate.model.run

    def recording(inputs: np.ndarray, states: object) -> object:  # type: ignore[type-arg]
        calls.append((int(inputs.shape[0]), int(inputs.shape[1])))
        return gated(inputs, states)  # type: ignore[operator]

    gate.model.run = recording  # type: ignore[method-assign]
    first = asyncio.ensure_future(feed(engine, sessions[0], tokens(0, 2)))
    await gate.wait_entered()
    # 15 session steps (1 token) and a Predict of 4 rows (3 tokens) wait for the next batch.
    steps = [asyncio.ensure_future(feed(engine, s, tokens(1, 1))) for s in sessions[1:]]
    predict = asyncio.ensure_future(
        engine.predict(tm.GRU_LM, 0, [tokens(i, 3) for i in range(4)], OutputOptions())
    )
    await asyncio.sleep(0.05)
    gate.open()
    await asyncio.gather(first, *steps, predict)
    # The batch after the one in flight: 6 session steps and 2 of the 4 rows (a quarter of 8),
    # so the rows are not starved by a stream of steps; the rest follow.
    assert calls[1:3] == [(6, 1), (2, 3)]
