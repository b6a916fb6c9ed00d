"""The long request-fuzzing run: tests/integration/test_fuzz.py's generator, for many more cases.

Starts an in-process server (the shipped models by default), then sends hypothesis-made
mutations of valid requests of every method of both front doors, in batches that rotate through
the three case strategies (field values, wire bytes, random bytes), each batch with its own
seed, until --cases are sent or --duration has passed. Prints progress, then the cases tried per
method and the codes seen, and writes a JSON summary (docs/security/fuzz-<date>.json by default).
Exits non-zero on any INTERNAL or UNKNOWN answer, any hang, a server that stopped serving, or a
reference session that no longer equals its twin.

    .venv/bin/python bench/fuzz.py                      # 20,000 cases or 5 minutes
    .venv/bin/python bench/fuzz.py --cases 2000 --tiny  # the test's tiny models, shorter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generator is shared with the test suite

from fuzz_harness import (  # noqa: E402
    Fuzzer,
    Tally,
    build_seeds,
    draw_cases,
    methods,
    server_failures,
    valid_inputs,
)
from fuzz_mutations import field_cases, random_cases, wire_cases  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from rnnserve.server.app import build_server  # noqa: E402
from rnnserve.server.logs import configure_logging  # noqa: E402
from rnnserve.server.settings import Settings  # noqa: E402
from rnnserve.server.transport.codecs import decode_tensor  # noqa: E402
from rnnserve.v1 import rnnserve_pb2 as pb  # noqa: E402
from rnnserve.v1 import rnnserve_pb2_grpc  # noqa: E402

FUZZER = (("x-client-id", "fuzzer"),)
REFERENCE = (("x-client-id", "reference"),)
STRATEGIES = ("fields", "wire", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=20_000, help="stop after this many cases")
    parser.add_argument("--duration", type=float, default=300.0, help="or after these seconds")
    parser.add_argument("--batch", type=int, default=500, help="cases drawn per seed")
    parser.add_argument("--seed", type=int, default=0, help="first batch's seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call: a hang")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny models")
    parser.add_argument("--out", type=Path, help="JSON summary (docs/security/fuzz-<date>.json)")
    return parser.parse_args(argv)


async def fuzz(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """Run the fuzzing against a fresh in-process server; the summary as a dict."""
    settings = Settings(host="127.0.0.1", port=0, metrics_port=None, model_repository=repository)
    server, port = build_server(settings)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        listed = await stub.ListModels(pb.ListModelsRequest(), metadata=REFERENCE)
        reference = await _Twins.open(stub, next(m for m in listed.models if m.streamable))
        seeds, strings = await build_seeds(channel, FUZZER)
        failures_before = server_failures()
        tally, started, batch = Tally(), time.monotonic(), 0
        fuzzer = Fuzzer(channel, FUZZER, args.timeout)
        try:
            while tally.cases < args.cases and time.monotonic() - started < args.duration:
                kind = STRATEGIES[batch % len(STRATEGIES)]
                count = min(args.batch, args.cases - tally.cases)
                for case in draw_cases(_strategy(kind, seeds, strings), count, args.seed + batch):
                    tally.add(case, await fuzzer.send(case))
                    if time.monotonic() - started >= args.duration:
                        break
                batch += 1
                _progress(tally, time.monotonic() - started)
        finally:
            await fuzzer.close()
        elapsed = time.monotonic() - started
        health = health_pb2_grpc.HealthStub(channel)
        serving = (
            await health.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        ).status == health_pb2.HealthCheckResponse.SERVING
        intact = await reference.still_equal(stub)
        server_counted = server_failures() - failures_before
    finally:
        await channel.close()
        await server.stop(2.0)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "repository": str(repository),
        "models": sorted(m.name for m in listed.models),
        "seconds": round(elapsed, 1),
        "cases": tally.cases,
        "batches": batch,
        "first_seed": args.seed,
        "cases_per_method": {t: sum(c.values()) for t, c in sorted(tally.codes.items())},
        "codes": dict(sorted(tally.by_code().items())),
        "codes_per_method": {t: dict(sorted(c.items())) for t, c in sorted(tally.codes.items())},
        "methods_not_fuzzed": sorted(set(methods()) - set(tally.codes)),
        "internal_or_unknown": tally.count("INTERNAL", "UNKNOWN"),
        "server_counted_internal_or_unknown": server_counted,
        "hangs": tally.count("HANG"),
        "server_serving_after": serving,
        "reference_session_intact": intact,
        "bad_cases": tally.bad[:50],
        "table": tally.table(),
    }


class _Twins:
    """A session the fuzzer never learns of, and its twin: after the run they must agree."""

    def __init__(self, mine: str, theirs: str, data: pb.StepInput) -> None:
        self.mine, self.theirs, self.data = mine, theirs, data

    @classmethod
    async def open(
        cls, stub: rnnserve_pb2_grpc.InferenceServiceStub, model: pb.ModelInfo
    ) -> _Twins:
        data = valid_inputs(model)[0][1]
        ids = []
        for _ in range(2):
            created = await stub.CreateSession(
                pb.CreateSessionRequest(model=pb.ModelRef(name=model.name)), metadata=REFERENCE
            )
            ids.append(created.session.session_id)
            await stub.Step(pb.StepRequest(session_id=ids[-1], input=data), metadata=REFERENCE)
        return cls(ids[0], ids[1], data)

    async def still_equal(self, stub: rnnserve_pb2_grpc.InferenceServiceStub) -> bool:
        results = [
            (
                await stub.Step(pb.StepRequest(session_id=s, input=self.data), metadata=REFERENCE)
            ).result
            for s in (self.mine, self.theirs)
        ]
        outputs = [np.asarray(decode_tensor(r.outputs[0].tensor)) for r in results]
        return bool(
            results[0].step_count == results[1].step_count
            and np.array_equal(outputs[0], outputs[1])
        )


def _strategy(kind: str, seeds: Any, strings: Any) -> Any:
    if kind == "fields":
        return field_cases(seeds, strings)
    if kind == "wire":
        return wire_cases(seeds, strings)
    return random_cases(seeds)


def _progress(tally: Tally, elapsed: float) -> None:
    codes = ", ".join(f"{code} {n}" for code, n in sorted(tally.by_code().items()))
    bad = tally.count("INTERNAL", "UNKNOWN", "HANG")
    print(f"[{elapsed:6.1f} s] {tally.cases:>6} cases, {bad} bad ({codes})", flush=True)


def _failed(summary: dict[str, Any]) -> list[str]:
    reasons = []
    if summary["internal_or_unknown"] or summary["server_counted_internal_or_unknown"]:
        reasons.append("INTERNAL or UNKNOWN answers")
    if summary["hangs"]:
        reasons.append("hangs")
    if not summary["server_serving_after"]:
        reasons.append("the server stopped serving")
    if not summary["reference_session_intact"]:
        reasons.append("the reference session differs from its twin")
    return reasons


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("error")  # every refused case is an INFO line; errors still show
    with tempfile.TemporaryDirectory() as work:
        repository = args.repository
        if args.tiny:
            from tiny_models import build_repository

            repository = Path(work) / "tiny"
            build_repository(repository)
        summary = asyncio.run(fuzz(args, repository))
    print(summary["table"])
    print(
        f"{summary['cases']} cases in {summary['seconds']} s; codes {summary['codes']}; "
        f"INTERNAL/UNKNOWN {summary['internal_or_unknown']} "
        f"(server counter {summary['server_counted_internal_or_unknown']}); "
        f"hangs {summary['hangs']}; serving after: {summary['server_serving_after']}; "
        f"reference session intact: {summary['reference_session_intact']}"
    )
    for line in summary["bad_cases"]:
        print(line)
    out = args.out or ROOT / "docs" / "security" / f"fuzz-{summary['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out}")
    reasons = _failed(summary)
    if reasons:
        print("FAILED: " + "; ".join(reasons), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
