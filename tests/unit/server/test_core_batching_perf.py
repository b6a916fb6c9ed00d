"""Batching pays: 64 sessions stepping at once share calls, and the per-token costs are printed.

The figures (raw onnxruntime and engine CPU per token, batch 1 vs 64) are for people: run with
`-m slow -s`. Timing thresholds belong in the benchmark, not here (a shared machine's noise made
a 2x ratio assertion flaky); what is asserted is the batching itself.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from rnnserve.server.domain import OutputFormat, OutputOptions, OutputSteps
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.runtime import OnnxModel
from rnnserve.server.settings import Settings

pytestmark = pytest.mark.slow

VOCABULARY = [chr(32 + i) for i in range(96)]


def _best_per_token(model: OnnxModel, batch: int, repeats: int) -> float:
    tokens = np.full((batch, 1), 5, dtype=np.int64)
    states = [np.zeros((2, batch, 256), np.float32)] * 2
    for _ in range(3):
        model.run(tokens, states)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            model.run(tokens, states)
        best = min(best, (time.perf_counter() - started) / repeats / batch)
    return best


async def _engine_cpu_per_token(
    engine: InferenceEngine, sessions: int, steps: int
) -> tuple[float, float]:
    """(CPU seconds per token, sessions per model call) of `sessions` stepping at once."""
    options = OutputOptions(OutputSteps.LAST, OutputFormat.TOP_K, top_k=5)
    token = np.array([5], dtype=np.int64)
    ids = [(await engine.create_session("lstm256", 0, "me")).session_id for _ in range(sessions)]
    statistics = engine.model_statistics("lstm256")[0]

    async def drive(session: str) -> None:
        for _ in range(steps):
            await engine.step(session, "me", token, options)

    await asyncio.gather(*(drive(s) for s in ids))  # warm up
    started, calls = time.process_time(), statistics.executions  # CPU of every thread
    await asyncio.gather(*(drive(s) for s in ids))
    cpu = (time.process_time() - started) / (sessions * steps)
    return cpu, sessions * steps / (statistics.executions - calls)


async def test_batched_steps_cost_less_per_token(tmp_path: Path) -> None:
    tm.build_language_model(
        tmp_path, "lstm256", "lstm", layers=2, hidden=256, embedding=64, vocabulary=VOCABULARY
    )
    engine = InferenceEngine(Settings(model_repository=tmp_path, metrics_port=None))
    await engine.start()
    try:
        model = engine.registry.served(("lstm256", 1)).model
        solo, batched = _best_per_token(model, 1, 100), _best_per_token(model, 64, 10)
        engine_solo, solo_batch = await _engine_cpu_per_token(engine, 1, 300)
        engine_batched, batch = await _engine_cpu_per_token(engine, 64, 20)
    finally:
        await engine.stop(1.0)
    print(
        f"\nraw onnxruntime per token: batch 1 {solo * 1e6:.0f} us, batch 64 {batched * 1e6:.0f} us"
        f"\nengine CPU per token: 1 session {engine_solo * 1e6:.0f} us, "
        f"64 sessions {engine_batched * 1e6:.0f} us ({batch:.1f} sessions per call)"
    )
    assert solo_batch == 1.0
    assert batch >= 16  # 64 sessions stepping at once share their model calls
