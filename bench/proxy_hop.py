"""The proxy hop and worker scaling: rnnserve-load direct vs through HAProxy, 1 vs 2 workers.

Starts two rnnserve workers (memory mode) and two HAProxy instances running
deploy/haproxy/haproxy.cfg: one with both of its backends on worker 1 (the hop alone), one
spread over workers 1 and 2. Then, in rounds, alternating so that drift hits every variant
alike: 1 stream direct / through the proxy (p50), 64 streams direct / through the proxy / over 2
workers (throughput). Prints medians of the rounds as markdown and writes JSON.

The load generator runs in this process, on the same cores as the workers and the proxy: on a
2-core machine, "2 workers" shares the cores with the load; pin them apart where cores allow
(taskset) to measure scaling itself.

    .venv/bin/python bench/proxy_hop.py --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rnnserve.client.load import LoadConfig, run_load
from servers import start_rnnserve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from scale_servers import haproxy_server  # noqa: E402  (the tests' HAProxy, one way to start it)


def measure(target: str, concurrency: int, duration_s: float, model: str) -> dict[str, Any]:
    """One stream-mode rnnserve-load run; its throughput, p50 and errors."""
    config = LoadConfig(
        target=target,
        model=model,
        mode="stream",
        concurrency=concurrency,
        steps=100,
        duration_s=duration_s,
        warmup_messages=20,
    )
    summary = run_load(config).summary
    failed = {code: n for code, n in summary.codes.items() if code != "OK"}
    return {
        "tokens_per_s": summary.steps_per_s,
        "p50_ms": summary.latency.percentiles["p50"] * 1000,
        "errors": failed,
    }


VARIANTS = [
    ("1 stream, direct", "direct", 1),
    ("1 stream, proxy", "hop", 1),
    ("64 streams, direct", "direct", 64),
    ("64 streams, proxy (1 worker)", "hop", 64),
    ("64 streams, proxy (2 workers)", "spread", 64),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--model", default="char-lstm")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="proxy-hop-"))
    with contextlib.ExitStack() as started:
        workers = []
        for index in range(2):
            logs = workdir / f"worker{index}"
            logs.mkdir()
            process, _ = start_rnnserve(
                logs, args.repository, args.model, snapshot_dir=str(logs / "snapshots")
            )
            started.callback(process.stop)
            workers.append(process.target)
        for name in ("hop", "spread"):
            (workdir / name).mkdir()
        # The hop alone: both of the proxy's backends are worker 1.
        hop = started.enter_context(haproxy_server([workers[0], workers[0]], workdir / "hop"))
        spread = started.enter_context(haproxy_server(workers, workdir / "spread"))
        targets = {"direct": workers[0], "hop": hop.address, "spread": spread.address}

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
        for round_ in range(args.rounds):
            for name, where, concurrency in VARIANTS:
                result = measure(targets[where], concurrency, args.duration, args.model)
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)

    medians = {
        name: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "errors": sum(sum(r["errors"].values()) for r in results),
        }
        for name, results in runs.items()
    }
    print(f"| {args.model}, stream mode, medians of {args.rounds} | tokens/s | p50 ms | errors |")
    print("|---|---:|---:|---:|")
    for name, median in medians.items():
        print(
            f"| {name} | {median['tokens_per_s']:,.0f} | {median['p50_ms']:.2f} "
            f"| {median['errors']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
