"""`python bench/run.py` (`make bench`): rnnserve beside its floors, in one run on one machine.

Runs the in-process onnxruntime floor, then every scenario against a trivial echo server (the
transport floor) and rnnserve, alternating servers repetition by repetition so that both see the
same machine noise, then the idle-sessions memory test on a fresh server. Writes
bench/results/bench-<time>.json, plots under docs/img/ and the results section of
docs/benchmarks.md. Each repetition is bounded (a few seconds); the whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine_floor import measure_engine
from floors import measure_floors
from memory import measure_memory
from model import NAME, bench_repository
from profiling import start_recording
from profiling import summarise as summarise_profile
from rnnserve.client.load import LoadConfig, LoadResult, run_load
from rnnserve.client.load.plot import plot_result
from rnnserve.server.manifest import MANIFEST_FILENAME, load_manifest
from scenarios import LONG, Scenario, scenarios
from servers import ServerProcess, start_echo, start_rnnserve, start_transport_only

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
IMAGES = REPO / "docs" / "img"
# Server settings for the benchmark: room for 100k sessions and for 10k-step prefixes.
SERVER_SETTINGS = {"max_sessions": "120000", "max_steps_per_message": "20000"}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _config(
    scenario: Scenario, server: ServerProcess, metrics: str | None, **extra: Any
) -> LoadConfig:
    load = dict(scenario.load)
    load.update(extra)
    return LoadConfig(
        target=server.target,
        model=NAME,
        warmup_messages=0,
        metrics_url=metrics,
        progress=False,
        **load,
    )


def _record(result: LoadResult, server_cpu_s: float) -> dict[str, Any]:
    summary = result.summary
    steps = max(summary.steps_ok, 1)
    record: dict[str, Any] = {
        "steps_per_s": summary.steps_per_s,
        "messages_per_s": summary.messages_per_s,
        "sessions_per_s": summary.sessions_per_s,
        "p50_s": summary.latency.p(50),
        "p90_s": summary.latency.p(90),
        "p99_s": summary.latency.p(99),
        "p99.9_s": summary.latency.p(99.9),
        "max_s": summary.latency.max,
        "p50_per_step_s": summary.latency_per_step.p(50),
        "messages_ok": summary.messages_ok,
        "errors": summary.messages_failed,
        "codes": summary.codes,
        "duration_s": summary.duration_s,
        "client_cpu_share": result.client_cpu_s / max(summary.duration_s, 1e-9),
        "server_cpu_share": server_cpu_s / max(summary.duration_s, 1e-9),
        "server_cpu_per_step_s": server_cpu_s / steps,
    }
    if result.server is not None:
        record["server_queue_s"] = result.server.queue_s
        record["server_compute_s"] = result.server.compute_s
        record["server_batch_size"] = result.server.batch_size
        record["server_request_s"] = result.server.request_s
    return record


def _median(records: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"repeats": len(records)}
    for key, value in records[0].items():
        if isinstance(value, int | float):
            merged[key] = statistics.median(r[key] for r in records if key in r)
    codes: dict[str, int] = {}
    for record in records:
        for code, count in record["codes"].items():
            codes[code] = codes.get(code, 0) + count
    merged["codes"] = codes
    merged["errors"] = sum(r["errors"] for r in records)
    return merged


def _groups(chosen: list[Scenario]) -> list[list[Scenario]]:
    """Consecutive scenarios sharing a `group` run together, their repetitions interleaved."""
    groups: list[list[Scenario]] = []
    for scenario in chosen:
        if groups and scenario.group is not None and groups[-1][0].group == scenario.group:
            groups[-1].append(scenario)
        else:
            groups.append([scenario])
    return groups


def _bounds(scenario: Scenario, duration_s: float) -> dict[str, Any]:
    if not scenario.timed:
        return {}
    if scenario.load.get("mode") == "generate":  # calls of `steps` tokens, one after another
        return {"duration_s": duration_s, "sessions": LONG}
    concurrency = scenario.load.get("concurrency", 1)
    return {"duration_s": duration_s, "steps": LONG, "sessions": concurrency}


def run_scenarios(
    chosen: list[Scenario],
    servers: dict[str, ServerProcess],
    metrics: str,
    *,
    duration_s: float,
    repeats: int,
    plot_key: str | None,
    profile_keys: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """Every scenario against every server it names.

    Repetitions are interleaved across servers (echo, rnnserve, echo, ...) and across the
    scenarios of a group (step 10, 1,000, 10,000, step 10, ...), so slow drifts in machine load
    hit every column alike.
    """
    results: dict[str, dict[str, Any]] = {}
    for group in _groups(chosen):
        pairs = [(scenario, name) for scenario in group for name in scenario.servers]
        for scenario, name in pairs:  # warm-up: connections, code paths, allocator
            bounds = _bounds(scenario, duration_s)
            warm = dict(bounds, duration_s=min(duration_s, 0.5)) if scenario.timed else {}
            run_load(_config(scenario, servers[name], None, **warm))
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {(s.key, n): [] for s, n in pairs}
        for repeat in range(repeats):
            for scenario, name in pairs:
                server = servers[name]
                url = metrics if name == "rnnserve" else None
                bounds = _bounds(scenario, duration_s)
                config = _config(scenario, server, url, seed=repeat, **bounds)
                cpu = server.cpu_seconds()
                result = run_load(config)
                record = _record(result, server.cpu_seconds() - cpu)
                runs[(scenario.key, name)].append(record)
                _log(
                    f"{scenario.key:<14} {name:<9} #{repeat + 1}: {record['steps_per_s']:>9,.0f}"
                    f" steps/s  p50 {record['p50_s'] * 1e3:7.3f} ms  p99"
                    f" {record['p99_s'] * 1e3:7.3f} ms  errors {record['errors']}"
                    f"  server CPU {record['server_cpu_per_step_s'] * 1e6:6.1f} us/step"
                )
                if scenario.key == plot_key and name == "rnnserve" and repeat == 0:
                    IMAGES.mkdir(parents=True, exist_ok=True)
                    plot_result(result, IMAGES / f"load-{scenario.key}.png")
        for scenario in group:
            results[scenario.key] = {
                "title": scenario.title,
                "load": scenario.load,
                "servers": {n: _median(runs[(scenario.key, n)]) for n in scenario.servers},
            }
            if scenario.key in profile_keys and "rnnserve" in scenario.servers:
                config = _config(
                    scenario, servers["rnnserve"], None, **_bounds(scenario, duration_s)
                )
                results[scenario.key]["profile"] = _profile(servers["rnnserve"], config, duration_s)
    return results


def _profile(server: ServerProcess, config: LoadConfig, duration_s: float) -> dict[str, Any] | None:
    """One extra run (not in the medians) with py-spy sampling the server."""
    raw = RESULTS / f"profile-{config.mode}-c{config.concurrency}.txt"
    recorder = start_recording(server.pid, duration_s, raw)
    if recorder is None:
        _log("py-spy not installed: no profile (pip install py-spy)")
        return None
    time.sleep(0.3)  # let py-spy attach before the load starts
    run_load(config)
    _, errors = recorder.communicate(timeout=duration_s + 30)
    if recorder.returncode != 0 or not raw.exists():
        _log(f"py-spy failed: {errors.decode(errors='replace').strip()[-300:]}")
        return None
    _log(f"profile: {raw}")
    return summarise_profile(raw)


def evaluate_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as measured ratios (value, limit, ratio to the limit, met or not)."""
    runs, floors = data["scenarios"], data["floors"]
    targets: list[dict[str, Any]] = []

    def server(key: str, name: str) -> dict[str, Any] | None:
        entry = runs.get(key)
        return entry["servers"].get(name) if entry else None

    def add(name: str, value: float, limit: float, *, lower_is_better: bool, note: str) -> None:
        met = value <= limit if lower_is_better else value >= limit
        targets.append(
            {"target": name, "value": value, "limit": limit, "met": met, "note": note,
             "lower_is_better": lower_is_better}
        )  # fmt: skip

    echo1, rns1 = server("stream-c1", "echo"), server("stream-c1", "rnnserve")
    if echo1 and rns1:
        floor = echo1["p50_s"] + floors["step"]["1"]["call_s"]
        add("1 stream p50 <= 1.3 x (echo p50 + in-process step)", rns1["p50_s"], 1.3 * floor,
            lower_is_better=True, note=f"echo {echo1['p50_s'] * 1e3:.3f} ms + step "
            f"{floors['step']['1']['call_s'] * 1e3:.3f} ms")  # fmt: skip
    for c in (64, 256):
        echo, rns = server(f"stream-c{c}", "echo"), server(f"stream-c{c}", "rnnserve")
        if echo and rns:
            add(f"{c} streams >= 0.8 x echo throughput", rns["steps_per_s"],
                0.8 * echo["steps_per_s"], lower_is_better=False,
                note=f"echo {echo['steps_per_s']:,.0f} steps/s")  # fmt: skip
            targets[-1]["met"] = targets[-1]["met"] and rns["errors"] == 0
            add(f"{c} streams: zero errors", rns["errors"], 0, lower_is_better=True, note="")
    for c in (1, 64):  # the model's time per token at the batch that many generations make
        echo, rns = server(f"generate-c{c}", "echo"), server(f"generate-c{c}", "rnnserve")
        if echo and rns:
            model_s = floors["step"][str(c)]["per_token_s"]
            floor = 1 / (1 / echo["steps_per_s"] + model_s)
            note = f"echo {echo['steps_per_s']:,.0f} tok/s, model {model_s * 1e6:.1f} us/token"
            add(f"Generate, {c} concurrent >= 0.75 x (echo + model) tokens/s", rns["steps_per_s"],
                0.75 * floor, lower_is_better=False, note=note)  # fmt: skip
            targets[-1]["met"] = targets[-1]["met"] and rns["errors"] == 0
    single, chunk = server("stream-c1", "rnnserve"), server("chunk64-c1", "rnnserve")
    if single and chunk:
        add("chunked (64/msg) server CPU per token <= 1/5 of single steps",
            chunk["server_cpu_per_step_s"], single["server_cpu_per_step_s"] / 5,
            lower_is_better=True,
            note=f"single {single['server_cpu_per_step_s'] * 1e6:.1f} us")  # fmt: skip
    positions = sorted(int(k.split("-")[1]) for k in runs if k.startswith("position-"))
    if len(positions) >= 2:
        first, last = (
            server(f"position-{positions[0]}", "rnnserve"),
            server(f"position-{positions[-1]}", "rnnserve"),
        )
        if first and last:
            add(f"per-token p50 at step {positions[-1]:,} within 10% of step {positions[0]:,}",
                last["p50_s"], 1.1 * first["p50_s"], lower_is_better=True,
                note=f"step {positions[0]:,}: {first['p50_s'] * 1e3:.3f} ms")  # fmt: skip
    memory = data.get("memory")
    if memory:
        add(f"RSS <= 1.5 x raw state at {memory['sessions']:,} sessions", memory["rss_bytes"],
            1.5 * memory["raw_state_bytes"], lower_is_better=True,
            note=f"raw {memory['raw_state_bytes'] / 2**20:,.0f} MiB")  # fmt: skip
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per scenario")
    parser.add_argument("--memory-sessions", type=int, default=100_000)
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--only", nargs="+", help="scenario keys to run (default: all)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--random-model", action="store_true", help="ignore the shipped model")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 1.5 s, 20k sessions")
    parser.add_argument("--no-profile", action="store_true", help="do not run py-spy")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.memory_sessions = 1.5, 1, 20_000

    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rnnserve-bench-"))
    repository, origin = bench_repository(work, random_model=args.random_model)
    _log(f"model: {NAME} ({origin}) from {repository}")
    data: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": NAME, "origin": origin},
        "settings": {"duration_s": args.duration, "repeats": args.repeats, **SERVER_SETTINGS},
    }
    _log("in-process onnxruntime floor")
    data["floors"] = measure_floors(repository, NAME)
    _log("in-process engine (the core without gRPC)")
    data["engine"] = measure_engine(repository, NAME, (1, 64), seconds=min(2.0, args.duration))
    chosen = [s for s in scenarios(tuple(args.positions)) if not args.only or s.key in args.only]
    manifest = load_manifest(repository / NAME / MANIFEST_FILENAME)
    logits = math.prod(manifest.outputs[0].shape)
    echo = start_echo(work, logits=logits)
    transport = start_transport_only(work, logits=logits)
    rnnserve, metrics = start_rnnserve(work, repository, NAME, **SERVER_SETTINGS)
    try:
        data["scenarios"] = run_scenarios(
            chosen,
            {"echo": echo, "transport": transport, "rnnserve": rnnserve},
            metrics,
            duration_s=args.duration,
            repeats=args.repeats,
            plot_key="stream-c64",
            profile_keys=() if args.no_profile else ("stream-c1", "stream-c64"),
        )
        data["rss_after_scenarios_bytes"] = rnnserve.rss_bytes()
    finally:
        echo.stop()
        transport.stop()
        rnnserve.stop()
    if not args.skip_memory:
        _log(f"memory: {args.memory_sessions:,} idle sessions on a fresh server")
        fresh, _ = start_rnnserve(work, repository, NAME, **SERVER_SETTINGS)
        try:
            data["memory"] = measure_memory(fresh, NAME, args.memory_sessions)
        finally:
            fresh.stop()
    data["targets"] = evaluate_targets(data)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _log(f"results: {out}")

    from report import render_markdown, render_plots, write_doc

    render_plots(data, IMAGES)
    markdown = render_markdown(data)
    print(markdown)
    if not args.no_doc:
        write_doc(DOC, markdown)
        _log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
