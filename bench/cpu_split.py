"""`python bench/cpu_split.py`: each server's CPU per message, split by thread.

Runs the same closed-loop load (one token a message) against echo, rnnserve's transport over a
no-op core, and rnnserve, one after another, and reads every thread's CPU time from
/proc/<pid>/task before and after each run. The event loop is the process's main thread; "other"
is gRPC's poller and event-engine threads and, for rnnserve, the model's worker thread. The loop
thread is what bounds a single worker's throughput: this is the table behind the CPU budget in
docs/benchmarks.md ("The per-message pass").

    python bench/cpu_split.py                  # 1 and 64 streams, 4 s each, the 2 x 256 twin
    python bench/cpu_split.py -c 64 256 -z 6
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model import NAME, bench_repository
from rnnserve.client.load import LoadConfig, run_load
from rnnserve.server.manifest import MANIFEST_FILENAME, load_manifest
from servers import ServerProcess, start_echo, start_rnnserve, start_transport_only

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of `pid`, by thread id."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return seconds


@dataclass(frozen=True)
class Split:
    """One load run against one server: its rate and CPU per message, loop thread and other."""

    tokens_per_s: float
    loop_us: float
    other_us: float
    errors: int


def measure(
    server: ServerProcess, concurrency: int, duration_s: float, *, mode: str = "stream"
) -> Split:
    """Drive `server` for `duration_s` and split its CPU per answered step by thread."""
    config = LoadConfig(
        target=server.target,
        model=NAME,
        mode=mode,  # type: ignore[arg-type]
        concurrency=concurrency,
        steps=200 if mode == "generate" else 10_000_000,
        steps_per_message=8 if mode == "generate" else 1,
        sessions=10_000_000 if mode == "generate" else None,
        duration_s=duration_s,
    )
    before = thread_cpu(server.pid)
    result = run_load(config)
    after = thread_cpu(server.pid)
    steps = max(1, result.summary.steps_ok)
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    loop = used.pop(server.pid, 0.0)
    return Split(
        result.summary.steps_per_s,
        1e6 * loop / steps,
        1e6 * sum(used.values()) / steps,
        result.summary.messages_failed,
    )


def add_load_arguments(
    parser: argparse.ArgumentParser, *, concurrency: list[int], duration_s: float
) -> None:
    """The load options of bench/cpu_split.py and bench/ab.py."""
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=concurrency)
    parser.add_argument("-z", "--duration", type=float, default=duration_s)
    parser.add_argument("--mode", choices=["stream", "generate"], default="stream")
    parser.add_argument("--shipped-model", action="store_true", help="not the 2 x 256 twin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, concurrency=[1, 64], duration_s=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnserve-cpu-split-") as work:
        logs = Path(work)
        repository, _ = bench_repository(logs, random_model=not args.shipped_model)
        logits = math.prod(load_manifest(repository / NAME / MANIFEST_FILENAME).outputs[0].shape)
        print("| load | server | tok/s | loop thread us/msg | other threads us/msg | errors |")
        print("|---|---|---:|---:|---:|---:|")
        for concurrency in args.concurrency:
            for name in ("echo", "transport", "rnnserve"):
                if name == "echo":
                    server = start_echo(logs, logits)
                elif name == "transport":
                    server = start_transport_only(logs, logits)
                else:
                    server, _ = start_rnnserve(logs, repository, NAME)
                try:
                    split = measure(server, concurrency, args.duration, mode=args.mode)
                finally:
                    server.stop()
                print(
                    f"| {args.mode} x {concurrency} | {name} | {split.tokens_per_s:,.0f} | "
                    f"{split.loop_us:,.0f} | {split.other_us:,.0f} | {split.errors} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
