"""The end-of-run table (in the manner of ghz and perf_analyzer) and the JSON form."""

from __future__ import annotations

import json
import math

from rnnserve.client.load.runner import LoadResult
from rnnserve.client.load.stats import PERCENTILES, Distribution


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1e3:.3f} ms"


def _distribution_rows(dist: Distribution) -> list[str]:
    rows = [f"  {name:<8}{_ms(value):>14}" for name, value in dist.percentiles.items()]
    rows.append(f"  {'max':<8}{_ms(dist.max):>14}")
    rows.append(f"  {'mean':<8}{_ms(dist.mean):>14}")
    return rows


def format_table(result: LoadResult) -> str:
    """A human-readable report of one run."""
    config, summary = result.config, result.summary
    loop = f"open loop at {config.rate:g} msg/s" if config.rate else "closed loop"
    total_msgs = summary.messages_ok + summary.messages_failed
    lines = [
        "Summary:",
        f"  Target:        {config.target}  model {config.model}"
        f" ({f'v{config.version}' if config.version else 'latest version'})",
        f"  Mode:          {config.mode}, {loop}, {config.concurrency} concurrent sessions,"
        f" {config.steps_per_message} step(s)/message",
        f"  Duration:      {summary.duration_s:.2f} s"
        f"  (warm-up: {config.warmup_messages} msg/worker, not counted)",
        f"  Messages:      {total_msgs:,}  ok {summary.messages_ok:,}"
        f"  failed {summary.messages_failed:,}",
        f"  Sessions:      {summary.sessions_done:,}",
        f"  Throughput:    {summary.steps_per_s:,.1f} steps/s   {summary.messages_per_s:,.1f} msg/s"
        f"   {summary.sessions_per_s:,.2f} sessions/s",
        f"  Client CPU:    {result.client_cpu_s:.2f} s"
        f" ({100 * result.client_cpu_s / max(summary.duration_s, 1e-9):.0f}% of one core)",
        "",
        "Latency per message:",
        *_distribution_rows(summary.latency),
    ]
    if config.steps_per_message > 1:
        lines += ["", "Latency per step (message latency / steps):"]
        lines += _distribution_rows(summary.latency_per_step)
    first = summary.first_output
    lines += [
        "",
        "Time to first output (session start -> first reply):",
        f"  p50 {_ms(first.p(50))}   p99 {_ms(first.p(99))}   max {_ms(first.max)}",
        "",
        "Status codes:",
        *[f"  {code:<20}{count:>12,}" for code, count in summary.codes.items()],
    ]
    if result.server is not None:
        server = result.server
        lines += [
            "",
            "Server (its own metrics, over the timed phase):",
            f"  queue wait:    {_ms(server.queue_s)} mean per step ({server.steps_queued:,} steps)",
            f"  compute:       {_ms(server.compute_s)} mean per batch call"
            f" ({server.batches:,} calls)",
            f"  batch size:    {server.batch_size:.1f} sessions mean"
            f"  -> {_ms(server.compute_per_step_s)} compute per step",
            f"  steps:         {server.steps_computed:,} computed",
        ]
        if server.requests:
            lines.append(
                f"  in server:     {_ms(server.request_s)} mean per {server.method} message"
                f" ({server.requests:,}), network and client excluded"
            )
    elif config.metrics_url:
        lines += ["", f"Server metrics: none read from {config.metrics_url}"]
    return "\n".join(lines)


def format_json(result: LoadResult, *, with_latencies: bool = False) -> str:
    """The result as indented JSON (NaN written as null)."""
    return json.dumps(_nan_to_none(result.to_dict(with_latencies=with_latencies)), indent=2)


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value


__all__ = ["PERCENTILES", "format_json", "format_table"]
