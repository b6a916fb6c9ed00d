"""A PNG for people: the latency distribution and the throughput over time (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rnnserve.client.load.runner import LoadResult


def plot_result(result: LoadResult, path: Path) -> Path:
    """Write a two-panel figure for one run to `path` and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # the base client install has no matplotlib
        raise RuntimeError("--plot needs matplotlib: pip install 'rnnserve[plot]'") from err

    config, summary = result.config, result.summary
    latencies_ms = np.asarray(result.latencies, dtype=np.float64) * 1e3
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if latencies_ms.size:
        upper = max(float(np.percentile(latencies_ms, 99.9)), 1e-3)
        left.hist(latencies_ms.clip(max=upper), bins=80, color="tab:blue")
        for name, value in summary.latency.percentiles.items():
            if name in ("p50", "p99"):
                left.axvline(value * 1e3, color="black", linestyle="--", linewidth=1)
                left.annotate(
                    f"{name} {value * 1e3:.2f} ms",
                    (value * 1e3, 0.95),
                    rotation=90,
                    xycoords=("data", "axes fraction"),
                    ha="right",
                    va="top",
                    fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
                )
    left.set_xlabel("latency per message (ms, clipped at p99.9)")
    left.set_ylabel("messages")
    left.set_title("latency distribution")
    if summary.throughput_over_time:
        times, rates = zip(*summary.throughput_over_time, strict=True)
        width = result.config.time_bucket_s
        right.plot([t + width / 2 for t in times], rates, marker=".", color="tab:green")
    right.set_xlabel("time since start (s)")
    right.set_ylabel("steps/s")
    right.set_ylim(bottom=0)
    right.set_title("throughput over time")
    fig.suptitle(
        f"{config.mode}, {config.concurrency} sessions, {config.steps_per_message} step(s)/msg: "
        f"{summary.steps_per_s:,.0f} steps/s, p50 {summary.latency.p(50) * 1e3:.2f} ms"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
