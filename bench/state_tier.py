"""The Redis state tier's cost and capacity, against a real redis-server started here.

    python bench/state_tier.py throughput [-c 64] [-n 200] [--repeats 2] [--batch-interval-s S]
        rnnserve-load streams against `rnnserve serve` with the memory store, then redis sync and
        batch (alternating, repeated): tokens/s and p50 per mode, and the ratios to memory.
    python bench/state_tier.py idle [--sessions 100000] [--cache 10000] [--reloads 1000]
        one engine in this process (tiny 2-layer LSTM LM, no gRPC), redis sync, a bounded cache:
        opens N sessions and steps each once, then reports this process's RSS, Redis's memory,
        and the latency of a step that must reload an evicted session vs one held in memory.

Redis runs with AOF (appendfsync everysec, the usual production setting) in a temporary folder.
On a 2-core machine the load generator, rnnserve and Redis share the cores: the figures are a
floor, not what a machine with spare cores shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from servers import start_rnnserve  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_PID = 0  # the bench's redis-server, for its CPU time


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """redis-server with AOF (fsync every second) on a free port; yields its URL."""
    global REDIS_PID
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make scale-deps)")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    REDIS_PID = process.pid
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- throughput -----------------------------------------------------------------------------


def throughput(args: argparse.Namespace) -> None:
    modes: list[tuple[str, dict[str, str]]] = [
        ("memory", {}),
        ("redis sync", {"state_store": "redis", "durability": "sync"}),
        ("redis batch", {"state_store": "redis", "durability": "batch"}),
    ]
    if args.batch_interval_s is not None:
        modes[2][1]["batch_interval_s"] = str(args.batch_interval_s)
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in modes}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        for _ in range(args.repeats):
            for name, settings in modes:
                if "state_store" in settings:
                    settings = {**settings, "redis_url": url}
                results[name].append(_load_run(Path(tmp), args, settings))
                print(f"{name:12s} {results[name][-1]}", flush=True)
    memory = statistics.median(r["tok_s"] for r in results["memory"])
    print(f"\n{args.concurrency} streams x {args.steps} one-token messages, {args.model}")
    print(
        f"{'mode':12s} {'tok/s (median)':>15s} {'x memory':>9s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'server CPU ms/1k tok':>21s} {'redis CPU ms/1k tok':>20s}"
    )
    for name, runs in results.items():
        tok = statistics.median(r["tok_s"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        cpu = statistics.median(r["server_cpu_ms_per_1k"] for r in runs)
        rcpu = statistics.median(r["redis_cpu_ms_per_1k"] for r in runs)
        print(
            f"{name:12s} {tok:15.0f} {tok / memory:9.2f} {p50:7.2f} {p99:7.2f} {cpu:21.0f} "
            f"{rcpu:20.0f}"
        )


def _load_run(tmp: Path, args: argparse.Namespace, settings: dict[str, str]) -> dict[str, float]:
    server, _ = start_rnnserve(tmp, ROOT / "models" / "repository", args.model, **settings)
    redis_cpu = _cpu_seconds(REDIS_PID)
    try:
        out = tmp / "load.json"
        subprocess.run(
            [
                str(Path(sys.executable).with_name("rnnserve-load")),
                "--target", server.target, "--model", args.model, "--mode", "stream",
                "-c", str(args.concurrency), "-n", str(args.steps), "--warmup", "20",
                "--output-format", "none", "--no-progress", "--json", str(out),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        report = json.loads(out.read_text())
        server_cpu = server.cpu_seconds()
    finally:
        server.stop()
    summary = _summary(report)
    # CPU per 1,000 tokens (warm-up and start-up included: compare modes, not absolutes)
    tokens = summary["tok_s"] * report["summary"]["duration_s"] / 1000
    summary["server_cpu_ms_per_1k"] = 1000 * server_cpu / tokens
    summary["redis_cpu_ms_per_1k"] = 1000 * (_cpu_seconds(REDIS_PID) - redis_cpu) / tokens
    return summary


def _summary(report: dict[str, Any]) -> dict[str, float]:
    """tokens/s, p50 and p99 (ms) from rnnserve-load's JSON (one token per message)."""
    summary = report["summary"]
    percentiles = summary["latency_per_step"]["percentiles"]
    return {
        "tok_s": summary["messages_ok"] / summary["duration_s"],
        "p50_ms": 1000 * percentiles["p50"],
        "p99_ms": 1000 * percentiles["p99"],
        "failed": summary["messages_failed"],
    }


# ---- idle sessions ----------------------------------------------------------------------------


def idle(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        asyncio.run(_idle(Path(tmp), url, args))


async def _idle(tmp: Path, url: str, args: argparse.Namespace) -> None:
    import numpy as np
    import redis
    from rnnserve.server.domain import OutputOptions
    from rnnserve.server.engine import InferenceEngine
    from rnnserve.server.settings import Settings
    from tiny_models import LSTM_LM, build_repository

    build_repository(tmp / "models")
    engine = InferenceEngine(
        Settings(
            model_repository=tmp / "models",
            models=[LSTM_LM],
            metrics_port=None,
            state_store="redis",
            redis_url=url,
            durability="sync",
            session_cache_size=args.cache,
            session_ttl_s=3600,
            max_sessions=args.cache + 10_000,
            max_sessions_per_principal=args.sessions,  # one principal opens all (Redis counts)
        )
    )
    await engine.start()
    rss_start = _rss_bytes(os.getpid())
    options = OutputOptions()
    one = np.array([1], dtype=np.int64)
    ids: list[str] = []

    async def open_and_step() -> str:
        view = await engine.create_session(LSTM_LM, 0, "bench")
        await engine.step(view.session_id, "bench", one, options)  # type: ignore[arg-type]
        return view.session_id

    began = time.monotonic()
    for start in range(0, args.sessions, args.chunk):
        count = min(args.chunk, args.sessions - start)
        ids += await asyncio.gather(*(open_and_step() for _ in range(count)))
        if (start // args.chunk) % 50 == 0:
            print(f"  {len(ids):,} sessions, {time.monotonic() - began:.0f} s", flush=True)
    filled_s = time.monotonic() - began
    rss = _rss_bytes(os.getpid())
    client = redis.Redis.from_url(url)
    redis_bytes = int(client.info("memory")["used_memory"])
    keys = int(client.dbsize())
    client.close()

    async def timed_step(session_id: str) -> float:
        t0 = time.perf_counter()
        await engine.step(session_id, "bench", one, options)  # type: ignore[arg-type]
        return (time.perf_counter() - t0) * 1000

    rng = random.Random(0)
    evicted = [i for i in ids[: len(ids) - args.cache] if i not in engine.sessions]
    reload_ms = [await timed_step(i) for i in rng.sample(evicted, min(args.reloads, len(evicted)))]
    held = [i for i in ids if i in engine.sessions]
    held_ms = [await timed_step(i) for i in rng.sample(held, min(args.reloads, len(held)))]
    await engine.stop(5)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q / 100 * len(values)))]

    print(f"\n{args.sessions:,} sessions (each opened and stepped once), cache {args.cache:,}")
    print(f"  filled in {filled_s:.0f} s ({args.sessions / filled_s:,.0f} sessions/s)")
    print(f"  in memory now: {len(engine.sessions):,} sessions; Redis keys: {keys:,}")
    print(f"  process RSS: {rss / 2**20:,.0f} MiB (at start {rss_start / 2**20:,.0f} MiB)")
    print(f"  Redis used_memory: {redis_bytes / 2**20:,.0f} MiB")
    for name, values in (("reload (evicted)", reload_ms), ("held in memory", held_ms)):
        print(
            f"  step latency, {name}: p50 {pct(values, 50):.2f} ms, p99 {pct(values, 99):.2f} ms "
            f"({len(values)} steps, one at a time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("throughput")
    load.add_argument("-c", "--concurrency", type=int, default=64)
    load.add_argument("-n", "--steps", type=int, default=200)
    load.add_argument("--repeats", type=int, default=2)
    load.add_argument("--model", default="char-lstm")
    load.add_argument(
        "--batch-interval-s", type=float, help="batch mode's batch_interval_s (default: server's)"
    )
    held = sub.add_parser("idle")
    held.add_argument("--sessions", type=int, default=100_000)
    held.add_argument("--cache", type=int, default=10_000)
    held.add_argument("--reloads", type=int, default=1000)
    held.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    throughput(args) if args.command == "throughput" else idle(args)


if __name__ == "__main__":
    main()
