"""`python bench/abuse.py`: does one client's abuse stall the others, or leave memory behind?

Starts `rnnserve serve` on 127.0.0.1 with the shipped models, and a victim client in its own
process that steps one token at a time on a char-lstm Stream for the whole run, timing every
step. Then, phase by phase, the attacker (this process) sends one kind of abusive request of
issue 9 (a 3.9 MB text Step, a Predict of 200,000 one-token sequences, Generate with 300,000
stop strings four at a time, a features shape of [0, 2^62], a 100 KB session id, 64 KB of
metadata, ...) at a paced rate, each request pre-serialized once so the attacker spends almost no
CPU of its own. Every phase is an undisturbed window followed by an attacked one of the same
length; the victim's p50/p99 in both, the attacker's status codes, and the server's RSS (VmRSS)
before and after are recorded.

Before the phases, every attack runs once for --warmup seconds, so that memory gRPC and the
allocator take once per process (pools first reaching a request's size) is not charged to a phase;
RSS at the start, after the warm-up and at the end is reported as well.

Pass: in every phase the attacker gets the expected code, the victim's p99 while attacked is
within 2x its undisturbed p99 (the window just before, so machine noise drifting over the run
does not count), and RSS after the phase is within 10% of before. Phases are grouped: "issue"
(the requests of issue 9), "near-limit" (as large as gRPC's receive limit lets through, packed
with the most sub-messages: their cost is the protobuf parse, ~5 ms at most, which holds the
GIL), "legal" (a Predict at the caps; shown, not judged). Writes
docs/security/abuse-<date>.{json,png,md}. Bounded: 13 phases of 2 x --seconds each plus the
warm-up (about 4 minutes at the defaults), then it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc
from servers import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "security"
MODELS = REPO / "models" / "repository"
VICTIM_MODEL = "char-lstm"  # language model, one token per step
TAGGER = "pos-bilstm"  # whole-sequence: stateless KServe batches
FEATURES_MODEL = "births-lstm"  # feature frames
SERVICE = "/rnnserve.v1.InferenceService/"
KSERVE = "/inference.GRPCInferenceService/"
P99_RATIO_LIMIT = 2.0
RSS_LIMIT = 0.10


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def vm_rss(pid: int) -> int:
    """The process's resident set size in bytes, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---- the victim: its own process, its own event loop -------------------------------------------


def victim_main(target: str, stop: Any, results: Connection) -> None:
    """Step one token at a time on a char-lstm Stream until `stop` is set; send back every
    step's (completion time on CLOCK_MONOTONIC, latency) pairs."""
    samples = asyncio.run(_victim(target, stop))
    results.send(samples)
    results.close()


async def _victim(target: str, stop: Any) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.Stream(metadata=(("x-client-id", "victim"),))
        await call.write(
            pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=VICTIM_MODEL)))
        )
        opened = await call.read()
        assert opened.WhichOneof("kind") == "session", opened
        token = 0
        while not stop.is_set():
            token = (token + 7) % 60  # ids within the shipped vocabulary
            request = pb.StreamRequest(step=pb.StepInput(tokens=pb.TokenIds(ids=[token])))
            started = time.monotonic()
            await call.write(request)
            reply = await call.read()
            finished = time.monotonic()
            if reply.WhichOneof("kind") != "result":
                raise RuntimeError(f"victim step failed: {reply.error.message}")
            samples.append((finished, finished - started))
        await call.done_writing()
    return samples


# ---- the attacks -----------------------------------------------------------------------------


@dataclass
class Shot:
    """One pre-serialized request, sent again and again during its phase."""

    method: str  # full method path
    body: bytes
    metadata: tuple[tuple[str, str], ...] = (("x-client-id", "attacker"),)
    streaming: str = "unary"  # unary | server (Generate) | stream (in-band errors)


@dataclass
class Phase:
    """One kind of abuse: what it sends, how many at once, what the server should answer."""

    name: str
    description: str
    shot: Shot
    concurrency: int = 1
    expected: str = "INVALID_ARGUMENT"
    # "issue": a request of issue 9 (judged); "near-limit": as large as the receive limit lets
    # through, packed with the most sub-messages (judged, reported apart); "legal": shown only
    group: str = "issue"
    result: dict[str, Any] = field(default_factory=dict)


def _stream_body(message: pb.StreamRequest) -> bytes:
    return message.SerializeToString()


def build_phases(session: str, features_session: str) -> list[Phase]:
    """The abusive requests of issue 9 (and a few neighbours), each serialized once."""
    one = pb.StepInput(tokens=pb.TokenIds(ids=[5]))
    char_lm = pb.ModelRef(name=VICTIM_MODEL)

    def step(data: pb.StepInput, session_id: str = session) -> bytes:
        return pb.StepRequest(session_id=session_id, input=data).SerializeToString()

    def generate(stops: int) -> bytes:
        request = pb.GenerateRequest(session_id=session, max_tokens=4, stop=["ab"] * stops)
        return request.SerializeToString()

    def kserve(shape: list[int], model: str, sequence: str | None) -> bytes:
        request = kpb.ModelInferRequest(model_name=model)
        request.inputs.add(name="tokens", datatype="INT64", shape=shape)
        count = int(np.prod(shape)) if all(d < 2**24 for d in shape) else 0
        request.raw_input_contents.append(np.full(count, 3, "<i8").tobytes())
        if sequence is not None:
            request.parameters["sequence_id"].string_param = sequence
        return request.SerializeToString()

    frames = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[0, 2**62])
    legal = pb.PredictRequest(
        model=char_lm, sequences=[pb.StepInput(tokens=pb.TokenIds(ids=[1, 2, 3, 4]))] * 1024
    )
    return [
        Phase(
            "text-3.9MB",
            "Step with 3.9 MB of text",
            Shot(SERVICE + "Step", step(pb.StepInput(text="a" * 3_900_000))),
            expected="RESOURCE_EXHAUSTED",
        ),
        Phase(
            "text-300KB",
            "Step with 300 KB of text (within the receive limit, over max_text_bytes)",
            Shot(SERVICE + "Step", step(pb.StepInput(text="a" * 300_000))),
            group="near-limit",
        ),
        Phase(
            "stream-text-300KB",
            "Stream messages of 300 KB text, refused in-band, one stream",
            Shot(
                SERVICE + "Stream",
                _stream_body(pb.StreamRequest(step=pb.StepInput(text="a" * 300_000))),
                streaming="stream",
            ),
            group="near-limit",
        ),
        Phase(
            "predict-200k",
            "Predict of 200,000 one-token sequences (1.4 MB)",
            Shot(
                SERVICE + "Predict",
                pb.PredictRequest(model=char_lm, sequences=[one] * 200_000).SerializeToString(),
            ),
            expected="RESOURCE_EXHAUSTED",
        ),
        Phase(
            "predict-60k",
            "Predict of 60,000 one-token sequences (within the receive limit)",
            Shot(
                SERVICE + "Predict",
                pb.PredictRequest(model=char_lm, sequences=[one] * 60_000).SerializeToString(),
            ),
            group="near-limit",
        ),
        Phase(
            "generate-300k-stops-x4",
            "Generate with 300,000 stop strings, 4 at once",
            Shot(SERVICE + "Generate", generate(300_000), streaming="server"),
            concurrency=4,
            expected="RESOURCE_EXHAUSTED",
        ),
        Phase(
            "generate-100k-stops-x4",
            "Generate with 100,000 stop strings (within the receive limit), 4 at once",
            Shot(SERVICE + "Generate", generate(100_000), streaming="server"),
            concurrency=4,
            expected="RESOURCE_EXHAUSTED",  # over Generate's own body limit: not parsed
            group="near-limit",
        ),
        Phase(
            "features-[0,2^62]",
            "Step with a features tensor of shape [0, 2^62]",
            Shot(SERVICE + "Step", step(pb.StepInput(features=frames), features_session)),
        ),
        Phase(
            "session-id-100KB",
            "Step naming a 100 KB session id",
            Shot(SERVICE + "Step", step(one, "s" * 100_000)),
        ),
        Phase(
            "metadata-64KB",
            "Step with 64 KB of request metadata",
            Shot(
                SERVICE + "Step",
                step(one),
                metadata=(("x-client-id", "attacker"), ("x-padding", "p" * 65_536)),
            ),
            expected="RESOURCE_EXHAUSTED",
        ),
        Phase(
            "kserve-shape-[1,2^62]",
            "KServe ModelInfer, sequence input of shape [1, 2^62]",
            Shot(KSERVE + "ModelInfer", kserve([1, 2**62], VICTIM_MODEL, "attacker-seq")),
        ),
        Phase(
            "kserve-batch-50k",
            "KServe ModelInfer, a stateless batch of 50,000 one-token rows",
            Shot(KSERVE + "ModelInfer", kserve([50_000, 1], TAGGER, None)),
            group="near-limit",
        ),
        Phase(
            "predict-1024-legal",
            "legal, at the caps: Predict of 1,024 sequences x 4 tokens (not abuse: shown)",
            Shot(SERVICE + "Predict", legal.SerializeToString()),
            expected="OK",
            group="legal",
        ),
    ]


async def _fire(channel: grpc.aio.Channel, shot: Shot, timeout_s: float) -> str:
    """Send one shot; the status code name it ended with (in-band errors count as theirs)."""
    try:
        if shot.streaming == "unary":
            call = channel.unary_unary(shot.method)
            await call(shot.body, metadata=shot.metadata, timeout=timeout_s)
        elif shot.streaming == "server":
            async for _ in channel.unary_stream(shot.method)(
                shot.body, metadata=shot.metadata, timeout=timeout_s
            ):
                pass
        else:
            raise AssertionError("streams are sent by _stream_worker")
        return "OK"
    except grpc.aio.AioRpcError as err:
        return str(err.code().name)


async def _stream_worker(
    channel: grpc.aio.Channel,
    shot: Shot,
    session: str,
    until: float,
    pace: Callable[[], Any],
    codes: Counter[str],
) -> None:
    """One Stream bound to the attacker's session, sending the shot's message again and again;
    each reply's in-band code is counted."""
    stub = pb_grpc.InferenceServiceStub(channel)
    call = stub.Stream(metadata=shot.metadata)
    await call.write(pb.StreamRequest(open=pb.OpenSession(session_id=session)))
    await call.read()
    message = pb.StreamRequest.FromString(shot.body)
    try:
        while time.monotonic() < until:
            await call.write(message)
            reply = await call.read()
            codes[reply.error.code_name if reply.WhichOneof("kind") == "error" else "OK"] += 1
            await pace()
        await call.done_writing()
    except grpc.aio.AioRpcError as err:
        codes[f"stream ended {err.code().name}"] += 1


async def attack(
    target: str, phase: Phase, session: str, seconds: float, rate: float, pid: int
) -> tuple[Counter[str], int]:
    """Send the phase's shot for `seconds` at `rate` requests/s in all; (codes, peak RSS)."""
    codes: Counter[str] = Counter()
    until = time.monotonic() + seconds
    interval = phase.concurrency / rate
    peak = vm_rss(pid)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:

        async def worker(offset: float) -> None:
            next_at = time.monotonic() + offset

            async def pace() -> None:
                nonlocal next_at
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            await asyncio.sleep(offset)
            if phase.shot.streaming == "stream":
                await _stream_worker(channel, phase.shot, session, until, pace, codes)
                return
            while time.monotonic() < until:
                codes[await _fire(channel, phase.shot, timeout_s=30.0)] += 1
                await pace()

        async def watch_memory() -> None:
            nonlocal peak
            while time.monotonic() < until:
                peak = max(peak, vm_rss(pid))
                await asyncio.sleep(0.1)

        offsets = [i * interval / phase.concurrency for i in range(phase.concurrency)]
        await asyncio.gather(watch_memory(), *(worker(o) for o in offsets))
    return codes, peak


async def attacker_sessions(target: str) -> tuple[str, str]:
    """The attacker's own char-lstm and births-lstm sessions (the ones its requests name)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        metadata = (("x-client-id", "attacker"),)
        sessions = []
        for model in (VICTIM_MODEL, FEATURES_MODEL):
            reply = await stub.CreateSession(
                pb.CreateSessionRequest(model=pb.ModelRef(name=model)), metadata=metadata
            )
            sessions.append(reply.session.session_id)
        return sessions[0], sessions[1]


async def wait_serving(target: str, timeout_s: float = 120.0) -> None:
    """Until the health check says SERVING (the models are loaded)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server not SERVING in time")


# ---- measuring -------------------------------------------------------------------------------


def window(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """The victim's latency in [start, end): count, p50, p99 (ms)."""
    latencies = [latency for finished, latency in samples if start <= finished < end]
    if len(latencies) < 50:
        return {"count": len(latencies), "p50_ms": float("nan"), "p99_ms": float("nan")}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"count": len(latencies), "p50_ms": cuts[49] * 1e3, "p99_ms": cuts[98] * 1e3}


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="rnnserve-abuse-"))
    command = [
        sys.executable, "-m", "rnnserve.server.cli", "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", "-1",
        "--model-repository", str(args.repository),
        "--models", VICTIM_MODEL, TAGGER, FEATURES_MODEL,
        "--log-level", "warning",
    ]  # fmt: skip
    _log(f"starting rnnserve on 127.0.0.1:{port} (log {log_dir / 'rnnserve.log'})")
    server = ServerProcess("rnnserve", command, port, log_dir / "rnnserve.log")
    target = server.target
    try:
        asyncio.run(wait_serving(target))
        session, features_session = asyncio.run(attacker_sessions(target))
        _log("building the abusive requests (once)")
        phases = build_phases(session, features_session)
        if args.only:
            phases = [p for p in phases if p.name in args.only]
        # spawn: a forked child would inherit this process's gRPC state, which gRPC forbids
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        receiver, sender = context.Pipe(duplex=False)
        victim = context.Process(target=victim_main, args=(target, stop, sender))
        victim.start()
        rss_start = vm_rss(server.pid)
        # Warm-up: each attack once, briefly, so that what is allocated once per process (gRPC
        # and allocator pools first reaching a request's size) is not counted as left behind by
        # a phase; the whole run's growth is reported too (start -> after warm-up -> end).
        for phase in phases:
            _log(f"warm-up: {phase.name}")
            asyncio.run(attack(target, phase, session, args.warmup, args.rate, server.pid))
        time.sleep(args.settle)
        rss_warm = vm_rss(server.pid)
        baseline_start = time.monotonic()
        time.sleep(args.seconds)
        baseline = (baseline_start, time.monotonic())
        windows: list[tuple[Phase, tuple[float, float], tuple[float, float], int, int]] = []
        for number, phase in enumerate(phases, 1):
            quiet_start = time.monotonic()
            time.sleep(args.seconds)
            quiet = (quiet_start, time.monotonic())
            rss_before = vm_rss(server.pid)
            _log(f"phase {number}/{len(phases)}: {phase.name} ({phase.description})")
            attack_start = time.monotonic()
            codes, peak = asyncio.run(
                attack(target, phase, session, args.seconds, args.rate, server.pid)
            )
            attacked = (attack_start, time.monotonic())
            time.sleep(args.settle)
            rss_after = vm_rss(server.pid)
            phase.result = {"codes": dict(codes), "rss_peak": peak}
            windows.append((phase, quiet, attacked, rss_before, rss_after))
            _log(f"  attacker got {dict(codes)}; RSS {rss_before >> 20} -> {rss_after >> 20} MiB")
        stop.set()
        samples = receiver.recv()
        victim.join(timeout=30)
        result = summarise(args, samples, baseline, windows)
        result["rss_run"] = {
            "start": rss_start,
            "after_warmup": rss_warm,
            "end": vm_rss(server.pid),
        }
        return result
    finally:
        server.stop()


def summarise(
    args: argparse.Namespace,
    samples: list[tuple[float, float]],
    baseline: tuple[float, float],
    windows: list[tuple[Phase, tuple[float, float], tuple[float, float], int, int]],
) -> dict[str, Any]:
    undisturbed = window(samples, *baseline)
    rows = []
    for phase, quiet, attacked, rss_before, rss_after in windows:
        before, during = window(samples, *quiet), window(samples, *attacked)
        ratio = during["p99_ms"] / before["p99_ms"]
        rss_change = (rss_after - rss_before) / rss_before
        codes = phase.result["codes"]
        code_ok = set(codes) == {phase.expected}
        rows.append(
            {
                "phase": phase.name,
                "description": phase.description,
                "group": phase.group,
                "attacker_codes": codes,
                "expected_code": phase.expected,
                "requests": sum(codes.values()),
                "victim_quiet": before,
                "victim_attacked": during,
                "p99_ratio": ratio,
                "rss_before": rss_before,
                "rss_after": rss_after,
                "rss_peak": phase.result["rss_peak"],
                "rss_change": rss_change,
                "pass": bool(code_ok and ratio <= P99_RATIO_LIMIT and abs(rss_change) <= RSS_LIMIT)
                if phase.group != "legal"
                else None,
            }
        )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "seconds": args.seconds,
            "rate": args.rate,
            "settle_s": args.settle,
            "warmup_s": args.warmup,
        },
        "victim": f"one {VICTIM_MODEL} Stream, one token per message, closed loop",
        "undisturbed": undisturbed,
        "phases": rows,
        "issue_pass": all(row["pass"] for row in rows if row["group"] == "issue"),
        "near_limit_pass": all(row["pass"] for row in rows if row["group"] == "near-limit"),
    }


# ---- reporting -------------------------------------------------------------------------------


def _codes_text(codes: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(codes.items()))


def verdicts(result: dict[str, Any]) -> str:
    """One line per group: did every phase pass?"""
    issue = "pass" if result["issue_pass"] else "FAIL"
    near = "pass" if result["near_limit_pass"] else "FAIL"
    return (
        f"The issue's abusive requests: {issue} (every phase: expected code, victim p99 within "
        f"2x, RSS within 10%). Near the receive limit: {near}."
    )


def table(result: dict[str, Any]) -> str:
    """The markdown table of a run."""
    base, settings, run_rss = result["undisturbed"], result["settings"], result["rss_run"]
    lines = [
        f"Victim undisturbed (start of run): p50 {base['p50_ms']:.2f} ms, p99 "
        f"{base['p99_ms']:.2f} ms over {base['count']:,} steps. Each phase: a quiet window, then "
        f"{settings['seconds']:g} s of attack at {settings['rate']:g} requests/s in all; ratio "
        "= attacked p99 / quiet p99 (limit 2x); RSS after "
        f"{settings['settle_s']:g} s of settling (limit 10%). Server RSS over the whole run: "
        f"{run_rss['start'] / 2**20:.0f} MiB at the start, {run_rss['after_warmup'] / 2**20:.0f} "
        f"after one {settings['warmup_s']:g} s warm-up of every attack, "
        f"{run_rss['end'] / 2**20:.0f} at the end.",
        "",
        "| phase | group | attacker's codes | victim p50 quiet / attacked ms | victim p99 quiet / "
        "attacked ms | p99 ratio | RSS before / peak / after MiB | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["phases"]:
        quiet, attacked = row["victim_quiet"], row["victim_attacked"]
        verdict = "yes" if row["pass"] else ("no" if row["pass"] is False else "(legal)")
        lines.append(
            f"| {row['phase']} | {row['group']} | {_codes_text(row['attacker_codes'])} | "
            f"{quiet['p50_ms']:.2f} / {attacked['p50_ms']:.2f} | "
            f"{quiet['p99_ms']:.2f} / {attacked['p99_ms']:.2f} | {row['p99_ratio']:.2f} | "
            f"{row['rss_before'] / 2**20:.0f} / {row['rss_peak'] / 2**20:.0f} / "
            f"{row['rss_after'] / 2**20:.0f} ({row['rss_change']:+.1%}) | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Victim p99 quiet vs attacked per phase, and the server's RSS before / after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["phases"]
    names = [row["phase"] for row in rows]
    x = np.arange(len(rows))
    figure, (latency, memory) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    quiet = [row["victim_quiet"]["p99_ms"] for row in rows]
    attacked = [row["victim_attacked"]["p99_ms"] for row in rows]
    latency.bar(x - 0.2, quiet, 0.4, label="quiet window", color="tab:gray")
    latency.bar(x + 0.2, attacked, 0.4, label="while attacked", color="tab:red")
    latency.plot(x, [2 * q for q in quiet], "k_", markersize=18, label="2x quiet (limit)")
    latency.set_yscale("log")  # the legal Predict at the caps is two orders above the rest
    latency.set_ylabel("victim p99 step latency (ms, log)")
    latency.legend()
    latency.set_title("One client's abuse vs another client's steps (rnnserve, shipped models)")
    before = [row["rss_before"] / 2**20 for row in rows]
    after = [row["rss_after"] / 2**20 for row in rows]
    memory.bar(x - 0.2, before, 0.4, label="RSS before", color="tab:blue")
    memory.bar(x + 0.2, after, 0.4, label="RSS after", color="tab:orange")
    memory.set_ylabel("server RSS (MiB)")
    memory.legend()
    memory.set_xticks(x, names, rotation=30, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each window")
    parser.add_argument("--rate", type=float, default=20.0, help="attack requests per second")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before RSS 'after'")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of each attack first")
    parser.add_argument("--repository", type=Path, default=MODELS)
    parser.add_argument("--only", nargs="+", help="phase names to run (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for json, png, md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(args)
    text = table(result)
    verdict = verdicts(result)
    print(text)
    print(verdict)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"abuse-{result['date'][:10]}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, stem.with_suffix(".png"))
        header = (
            f"# Abuse benchmark, {result['date']}\n\n`python bench/abuse.py` "
            f"(bench/abuse.py's docstring says what it does).\n\n{verdict}\n\n"
        )
        stem.with_suffix(".md").write_text(header + text + f"\n![abuse]({stem.name}.png)\n")
        _log(f"wrote {stem}.json, .png, .md")


if __name__ == "__main__":
    main()
