"""Collects per-message timings during a run and summarises them (percentiles, rates, codes)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
OK = "OK"


class Recorder:
    """Append-only record of one run's messages; cheap enough to call per message."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.done_at: list[float] = []  # completion time of each successful message (perf_counter)
        self.latency: list[float] = []  # seconds, successful messages only
        self.steps: list[int] = []  # input steps each successful message carried
        self.first_output: list[float] = []  # seconds from session start to its first output
        self.codes: Counter[str] = Counter()
        self.sessions_done = 0
        self.messages = 0  # every timed message, failed ones included (progress and budgets)

    def ok(self, done_at: float, latency: float, steps: int) -> None:
        """One message answered successfully."""
        self.done_at.append(done_at)
        self.latency.append(latency)
        self.steps.append(steps)
        self.codes[OK] += 1
        self.messages += 1

    def error(self, code: str) -> None:
        """One message (or a session open) failed with this status code name."""
        self.codes[code] += 1
        self.messages += 1

    def session_first_output(self, seconds: float) -> None:
        self.first_output.append(seconds)

    def session_done(self) -> None:
        self.sessions_done += 1


@dataclass
class Distribution:
    """Summary of a sample of durations, in seconds."""

    count: int
    mean: float
    min: float
    max: float
    percentiles: dict[str, float]

    @classmethod
    def of(cls, values: npt.NDArray[np.float64]) -> Distribution:
        if values.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, {_label(p): nan for p in PERCENTILES})
        points = np.percentile(values, PERCENTILES)
        return cls(
            count=int(values.size),
            mean=float(values.mean()),
            min=float(values.min()),
            max=float(values.max()),
            percentiles={_label(p): float(v) for p, v in zip(PERCENTILES, points, strict=True)},
        )

    def p(self, percentile: float) -> float:
        """The value at this percentile, e.g. p(50)."""
        return self.percentiles[_label(percentile)]


def _label(percentile: float) -> str:
    return f"p{percentile:g}"


@dataclass
class Summary:
    """The measured phase of a run, summarised."""

    duration_s: float
    messages_ok: int
    messages_failed: int
    steps_ok: int
    sessions_done: int
    messages_per_s: float
    steps_per_s: float
    sessions_per_s: float
    latency: Distribution
    latency_per_step: Distribution
    first_output: Distribution
    codes: dict[str, int]
    throughput_over_time: list[tuple[float, float]] = field(default_factory=list)
    """(bucket start in seconds since the run began, steps/s in that bucket)."""


def summarise(recorder: Recorder, duration_s: float, bucket_s: float) -> Summary:
    """Turn a run's record into rates and distributions over `duration_s` of measured time."""
    latency = np.asarray(recorder.latency, dtype=np.float64)
    steps = np.asarray(recorder.steps, dtype=np.float64)
    done_at = np.asarray(recorder.done_at, dtype=np.float64) - recorder.start
    steps_ok = int(steps.sum())
    failed = recorder.messages - len(recorder.latency)
    per_step = latency / steps if steps.size else latency
    duration = max(duration_s, 1e-9)
    return Summary(
        duration_s=duration_s,
        messages_ok=len(recorder.latency),
        messages_failed=failed,
        steps_ok=steps_ok,
        sessions_done=recorder.sessions_done,
        messages_per_s=len(recorder.latency) / duration,
        steps_per_s=steps_ok / duration,
        sessions_per_s=recorder.sessions_done / duration,
        latency=Distribution.of(latency),
        latency_per_step=Distribution.of(per_step),
        first_output=Distribution.of(np.asarray(recorder.first_output, dtype=np.float64)),
        codes=dict(sorted(recorder.codes.items(), key=lambda item: (item[0] != OK, item[0]))),
        throughput_over_time=_buckets(done_at, steps, duration_s, bucket_s),
    )


def _buckets(
    done_at: npt.NDArray[np.float64],
    steps: npt.NDArray[np.float64],
    duration_s: float,
    width: float,
) -> list[tuple[float, float]]:
    if done_at.size == 0:
        return []
    span = max(duration_s, float(done_at.max()))
    count = max(1, int(np.ceil(span / width)))
    edges = np.arange(count + 1, dtype=np.float64) * width
    sums, _ = np.histogram(done_at, bins=edges, weights=steps)
    # The last bucket is usually cut short by the end of the run: rate it over its real width,
    # and drop it when it is too short to say anything.
    widths = np.minimum(edges[1:], span) - edges[:-1]
    keep = [i for i in range(count) if widths[i] >= width / 2 or count == 1]
    return [(float(edges[i]), float(sums[i] / max(widths[i], 1e-9))) for i in keep]
