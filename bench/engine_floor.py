"""The core without its transport: InferenceEngine.step in this process, no gRPC, no network.

Sits between the model floor (onnxruntime alone) and the server (engine + gRPC): the gap to the
model is the scheduler, sessions and output building; the gap to the server is the transport.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.settings import Settings


async def _measure(
    engine: InferenceEngine, model: str, sessions: int, seconds: float
) -> dict[str, float]:
    ids = [(await engine.create_session(model, 0, "bench")).session_id for _ in range(sessions)]
    rng = np.random.default_rng(0)
    manifest = engine.get_model(model).manifest
    vocab = len(manifest.input.vocabulary) if manifest.input.kind == "tokens" else 1
    tokens = [rng.integers(0, vocab, size=1, dtype=np.int64) for _ in range(64)]
    options = OutputOptions()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def drive(session_id: str, offset: int) -> int:
        count = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await engine.step(session_id, "bench", tokens[(offset + count) % 64], options)
            latencies.append(time.perf_counter() - started)
            count += 1
        return count

    for session_id in ids:  # warm-up
        await engine.step(session_id, "bench", tokens[0], options)
    started = time.perf_counter()
    counts = await asyncio.gather(*(drive(s, i) for i, s in enumerate(ids)))
    elapsed = time.perf_counter() - started
    for session_id in ids:
        await engine.close_session(session_id, "bench")
    return {
        "sessions": sessions,
        "steps_per_s": sum(counts) / elapsed,
        "p50_s": statistics.median(latencies),
    }


async def _run(
    repository: Path, model: str, levels: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    settings = Settings(model_repository=repository, models=[model], metrics_port=None)
    engine = InferenceEngine(settings)
    await engine.start()
    try:
        return {str(n): await _measure(engine, model, n, seconds) for n in levels}
    finally:
        await engine.stop(1.0)


def measure_engine(
    repository: Path, model: str, levels: tuple[int, ...] = (1, 64), seconds: float = 2.0
) -> dict[str, Any]:
    """Steps/s and p50 of InferenceEngine.step at each number of concurrent sessions."""
    return asyncio.run(_run(repository, model, levels, seconds))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure_engine(Path(sys.argv[1]), sys.argv[2]), indent=2))
