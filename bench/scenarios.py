"""The benchmark's load scenarios: each is one LoadConfig shape run against one or more servers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LONG = 10**7  # messages per session when the duration bound is what ends a run


@dataclass(frozen=True)
class Scenario:
    """One row of the benchmark: a workload and the servers it runs against."""

    key: str
    title: str
    servers: tuple[str, ...]
    load: dict[str, Any] = field(default_factory=dict)
    timed: bool = True
    """True: bounded by the run duration; False: bounded by `load`'s own counts."""
    group: str | None = None
    """Scenarios of one group run their repetitions interleaved (compared with each other)."""


def scenarios(positions: tuple[int, ...]) -> list[Scenario]:
    """Every scenario, in run order."""
    # "transport": rnnserve's gRPC layer over a no-op engine, between the echo floor and rnnserve.
    both = ("echo", "transport", "rnnserve")
    items = [
        Scenario(
            f"stream-c{c}", f"Stream, {c} concurrent", both, {"mode": "stream", "concurrency": c}
        )
        for c in (1, 16, 64, 256)
    ]
    items += [
        Scenario(
            f"step-c{c}", f"unary Step, {c} concurrent", both, {"mode": "step", "concurrency": c}
        )
        for c in (1, 64)
    ]
    items += [
        Scenario(
            f"chunk64-c{c}",
            f"Stream, 64 steps/message, {c} concurrent",
            both,
            {"mode": "stream", "concurrency": c, "steps_per_message": 64, "output_steps": "all"},
        )
        for c in (1, 16)
    ]
    # Server-side generation: a prompt of 8 tokens, then 200 sampled tokens, each its own message.
    items += [
        Scenario(
            f"generate-c{c}",
            f"Generate, {c} concurrent (8-token prompt, 200 tokens a call)",
            both,
            {"mode": "generate", "concurrency": c, "steps": 200, "steps_per_message": 8},
        )
        for c in (1, 64)
    ]
    # Per-token cost by position: a few hundred timed messages right after the start position.
    items += [
        Scenario(
            f"position-{position}",
            f"Stream, 1 concurrent, at step {position:,}",
            ("rnnserve",),
            {"mode": "stream", "concurrency": 1, "start_position": position, "steps": 200},
            timed=False,
            group="position",
        )
        for position in positions
    ]
    # The naive baseline re-sends the whole prefix: each session sends one message of exactly
    # position + 1 tokens (so every sample is at that position); fewer at long prefixes.
    items += [
        Scenario(
            f"predict-{position}",
            f"naive stateless Predict, prefix {position:,}",
            ("rnnserve",),
            {
                "mode": "predict",
                "concurrency": 1,
                "start_position": position,
                "steps": 1,
                "sessions": 100 if position <= 100 else 30 if position <= 1000 else 6,
                "timeout_s": 120.0,
            },
            timed=False,
            group="predict",
        )
        for position in positions
    ]
    return items
