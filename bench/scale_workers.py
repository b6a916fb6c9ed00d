"""Worker scaling: rnnserve-load through HAProxy over W = 1, 2, 4, 8 `rnnserve serve` processes.

For each W: W workers (memory state store, the shipped models, `--intra-op-threads 1`), each
pinned to its own core; HAProxy on deploy/haproxy/haproxy.cfg's settings with W `server` lines;
then `rnnserve-load` (stream mode, concurrency 64 x W, fixed duration, `--json`). Workers get the
first cores of this process's affinity set; the load generator and HAProxy get the rest. Rounds
alternate the W values so that drift hits each alike. Prints medians as a markdown table
(tokens/s, speedup over W = 1, efficiency = tok/s(W) / (W x tok/s(1)), goal >= 0.8 up to W = 4)
and writes results.json (and scaling.png when matplotlib is installed) under --out.

A W that leaves no core for the load generator (fewer than W + 1 cores) runs unpinned and is
marked "(shared cores)": it then measures sharing, not scaling. Every process started here is
stopped by its pid.

    .venv/bin/python bench/scale_workers.py --workers 1 2 4 8 --rounds 3 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# The scale-out tests' helpers: free ports, waiting for a port, HAProxy's stats page.
from scale_servers import (  # noqa: E402
    HAPROXY_CONFIG,
    HAProxy,
    free_port,
    launch_haproxy,
    stop_process,
    wait_for_port,
)

GOAL = 0.8
"""The issue's goal: efficiency >= 0.8 up to W = 4."""


def _pinned(cores: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (and every thread it starts) to `cores`."""
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


@dataclass
class Layout:
    """Which cores the workers and the load generator (with HAProxy) run on; None: unpinned."""

    workers: list[set[int] | None]
    load: set[int] | None

    @property
    def shared(self) -> bool:
        return self.load is None


def layout(count: int, cores: list[int]) -> Layout:
    """Worker i on cores[i], the load generator and HAProxy on the rest; all unpinned when
    fewer than count + 1 cores are available."""
    if len(cores) < count + 1:
        return Layout([None] * count, None)
    return Layout([{core} for core in cores[:count]], set(cores[count:]))


def haproxy_config(addresses: list[str], path: Path) -> Path:
    """deploy/haproxy/haproxy.cfg with its two `server` lines replaced by one per address."""
    lines = [
        line
        for line in HAPROXY_CONFIG.read_text().splitlines()
        if not line.strip().startswith("server worker")
    ]
    # The rnnserve backend is the file's last section: the server lines go at its end.
    lines += [f"    server worker{i + 1} {address}" for i, address in enumerate(addresses)]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_haproxy(addresses: list[str], workdir: Path, cores: set[int] | None) -> HAProxy:
    """HAProxy in front of `addresses`, pinned to `cores`; returns once every server is UP."""
    config = haproxy_config(addresses, workdir / "haproxy.cfg")
    names = tuple(f"worker{i + 1}" for i in range(len(addresses)))
    proxy = launch_haproxy(config, workdir, names, preexec_fn=_pinned(cores))
    try:
        # HAProxy's gRPC health check passes only once a worker answers SERVING.
        proxy.wait_for_states({name: "UP" for name in names}, timeout=90)
    except BaseException:
        stop_process(proxy.process)
        raise
    return proxy


def start_workers(
    count: int, args: argparse.Namespace, workdir: Path, plan: Layout
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """`count` rnnserve processes on free ports, each pinned as `plan` says."""
    processes: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []
    try:
        for index in range(count):
            port = free_port()
            with (workdir / f"worker{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable, "-m", "rnnserve.server.cli", "serve",
                            "--port", str(port),
                            "--metrics-port", "-1",
                            "--intra-op-threads", "1",
                            "--state-store", "memory",
                            "--model-repository", str(args.repository),
                            "--snapshot-dir", str(workdir / f"snapshots{index}"),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_pinned(plan.workers[index]),
                    )
                )  # fmt: skip
            addresses.append(f"127.0.0.1:{port}")
        for process, address in zip(processes, addresses, strict=True):
            wait_for_port(int(address.rsplit(":", 1)[1]), process, timeout_s=60)
    except BaseException:
        for process in processes:
            stop_process(process)
        raise
    return processes, addresses


def run_load(
    target: str, concurrency: int, args: argparse.Namespace, out: Path, cores: set[int] | None
) -> dict[str, Any]:
    """One `rnnserve-load` run (stream mode, fixed duration) pinned to `cores`; its summary."""
    command = [
        sys.executable, "-m", "rnnserve.client.load.cli",
        "--target", target,
        "--model", args.model,
        "--mode", "stream",
        "--concurrency", str(concurrency),
        "--steps", "100",
        "--duration", str(args.duration),
        "--warmup", "20",
        "--no-progress",
        "--json", str(out),
    ]  # fmt: skip
    timeout = args.duration + 120  # bounded: warm-up and start-up, then the fixed duration
    done = subprocess.run(
        command, capture_output=True, timeout=timeout, preexec_fn=_pinned(cores), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rnnserve-load failed ({done.returncode}): {done.stderr.decode()}")
    summary: dict[str, Any] = json.loads(out.read_text())["summary"]
    return summary


def one_round(
    count: int, args: argparse.Namespace, cores: list[int], workdir: Path
) -> dict[str, Any]:
    """Start W workers and HAProxy, run the load once, stop them all; the run's figures."""
    plan = layout(count, cores)
    workdir.mkdir(parents=True)
    processes, addresses = start_workers(count, args, workdir, plan)
    try:
        proxy = start_haproxy(addresses, workdir, plan.load)
        try:
            concurrency = args.concurrency_per_worker * count
            summary = run_load(proxy.address, concurrency, args, workdir / "load.json", plan.load)
        finally:
            stop_process(proxy.process)
    finally:
        for process in processes:
            stop_process(process)
    codes = summary.get("codes", {})
    return {
        "tokens_per_s": float(summary["steps_per_s"]),
        "errors": sum(n for code, n in codes.items() if code != "OK"),
        "concurrency": args.concurrency_per_worker * count,
        "shared_cores": plan.shared,
        "worker_cores": [sorted(c) if c else None for c in plan.workers],
        "load_cores": sorted(plan.load) if plan.load else None,
    }


def summarise(runs: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Medians per W, with speedup and efficiency against W = 1 (when W = 1 was run)."""
    medians = {
        count: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "shared_cores": results[0]["shared_cores"],
        }
        for count, results in runs.items()
    }
    base = medians.get(1, {}).get("tokens_per_s")
    for count, median in medians.items():
        median["speedup"] = median["tokens_per_s"] / base if base else None
        median["efficiency"] = median["tokens_per_s"] / (count * base) if base else None
    return medians


def table(medians: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    """The medians as a markdown table."""
    rows = [
        f"| workers ({args.model}, stream, {args.concurrency_per_worker} x W streams, "
        f"medians of {args.rounds} x {args.duration:g} s) | tokens/s | speedup | efficiency "
        f"(goal >= {GOAL}) | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for count, m in medians.items():
        mark = " (shared cores)" if m["shared_cores"] else ""
        speedup = f"{m['speedup']:.2f}x" if m["speedup"] is not None else "-"
        efficiency = f"{m['efficiency']:.2f}" if m["efficiency"] is not None else "-"
        rows.append(
            f"| {count}{mark} | {m['tokens_per_s']:,.0f} | {speedup} | {efficiency} "
            f"| {m['errors']} |"
        )
    return "\n".join(rows)


def plot(medians: dict[int, dict[str, Any]], path: Path) -> bool:
    """tokens/s against W next to the ideal W x tok/s(1); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    counts = list(medians)
    measured = [medians[c]["tokens_per_s"] for c in counts]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(counts, measured, "o-", label="measured (median)")
    if 1 in medians:
        base = medians[1]["tokens_per_s"]
        axes.plot(counts, [c * base for c in counts], "--", label="W x one worker")
        axes.plot(counts, [GOAL * c * base for c in counts], ":", label=f"goal ({GOAL} x ideal)")
    axes.set_xlabel("workers (W)")
    axes.set_ylabel("tokens/s")
    axes.set_xticks(counts)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument(
        "--concurrency-per-worker", type=int, default=64, help="streams per worker (default 64)"
    )
    parser.add_argument("--model", default="char-lstm")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--out", type=Path, help="results folder (default: a new temp folder)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="scale-workers-"))
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    print(f"{len(cores)} cores available: {cores}; results in {out}", file=sys.stderr)
    for count in args.workers:
        if layout(count, cores).shared:
            print(
                f"W={count}: fewer than {count + 1} cores, runs unpinned (shared cores)",
                file=sys.stderr,
            )

    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in args.workers}
    started = time.monotonic()
    for round_ in range(args.rounds):
        for count in args.workers:
            result = one_round(count, args, cores, out / f"round{round_ + 1}-w{count}")
            runs[count].append(result)
            print(
                f"[{time.monotonic() - started:6.0f} s] round {round_ + 1}/{args.rounds} "
                f"W={count}: {result['tokens_per_s']:,.0f} tok/s, {result['errors']} errors",
                file=sys.stderr,
            )

    medians = summarise(runs)
    print(table(medians, args))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out / "results.json").write_text(
        json.dumps(
            {"settings": settings, "cores": cores, "runs": runs, "medians": medians}, indent=2
        )
    )
    if plot(medians, out / "scaling.png"):
        print(f"plot: {out / 'scaling.png'}", file=sys.stderr)
    print(f"json: {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
