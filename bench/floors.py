"""The model's own floor: onnxruntime in this process, no network, at batch 1 and batched."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rnnserve.server.manifest import load_manifest


def _session(onnx_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _time_call(run: Any, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Median seconds of one call, over repeated calls for about `seconds`."""
    for _ in range(5):
        run(None, feeds)
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        start = time.perf_counter()
        run(None, feeds)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure_floors(
    repository: Path,
    name: str,
    *,
    batches: tuple[int, ...] = (1, 64, 256),
    chunk: int = 64,
    threads: int = 1,
    seconds: float = 1.0,
) -> dict[str, Any]:
    """Per-call and per-token onnxruntime time for one step at each batch, and for a chunk."""
    manifest = load_manifest(repository / name / "model.json")
    version = manifest.latest_version
    session = _session(repository / name / str(version) / "model.onnx", threads)
    rng = np.random.default_rng(0)
    vocab = len(manifest.input.vocabulary) if manifest.input.kind == "tokens" else 1

    def feeds(batch: int, steps: int) -> dict[str, np.ndarray]:
        data: dict[str, np.ndarray] = {
            manifest.input.name: rng.integers(0, vocab, size=(batch, steps), dtype=np.int64)
        }
        for state in manifest.states:
            data[state.input_name] = np.zeros(state.full_shape(batch), dtype=np.float32)
        return data

    result: dict[str, Any] = {"threads": threads, "step": {}, "chunk": {}}
    for batch in batches:
        call = _time_call(session.run, feeds(batch, 1), seconds)
        result["step"][str(batch)] = {"call_s": call, "per_token_s": call / batch}
    call = _time_call(session.run, feeds(1, chunk), seconds)
    result["chunk"] = {"steps": chunk, "call_s": call, "per_token_s": call / chunk}
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure_floors(Path(sys.argv[1]), sys.argv[2]), indent=2))
