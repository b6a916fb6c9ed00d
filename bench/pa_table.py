"""Markdown table of perf_analyzer runs (bench/perf_analyzer.sh): medians over repetitions.

`python bench/pa_table.py OUT` reads OUT/rnnserve.c<N>.r<R>.csv and, when Triton ran beside it,
OUT/triton/pa/<model>.c<N>.r<R>.csv (the peers' run_pa.sh layout). A run that left a .FAILED
file or no CSV counts as failed. Latencies in perf_analyzer's CSV are microseconds.
"""

from __future__ import annotations

import csv
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

_NAME = re.compile(r"(?P<server>.+)\.c(?P<conc>\d+)\.r(?P<rep>\d+)\.csv$")


def _rows(folder: Path, label: str | None = None) -> dict[tuple[str, int], list[dict[str, float]]]:
    """(server, concurrency) -> one dict per repetition (PA's first CSV row)."""
    runs: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(folder.glob("*.csv")):
        match = _NAME.match(path.name)
        if match is None or path.with_suffix(".FAILED").exists():
            continue
        with path.open() as handle:
            row = next(csv.DictReader(handle), None)
        if row is None:
            continue
        values = {k: float(v) for k, v in row.items() if k and _number(v)}
        runs[(label or match["server"], int(match["conc"]))].append(values)
    return runs


def _number(text: str | None) -> bool:
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def _failures(folder: Path) -> dict[tuple[str, int], int]:
    failed: dict[tuple[str, int], int] = defaultdict(int)
    for path in folder.glob("*.FAILED"):
        match = _NAME.match(path.with_suffix(".csv").name)
        if match:
            failed[(match["server"], int(match["conc"]))] += 1
    return failed


def table(out: Path) -> str:
    runs = _rows(out)
    failed = _failures(out)
    triton = out / "triton" / "pa"
    if triton.is_dir():
        runs.update({(f"triton {k[0]}", k[1]): v for k, v in _rows(triton).items()})
        failed.update({(f"triton {k[0]}", k[1]): v for k, v in _failures(triton).items()})
    lines = [
        "| server | concurrency | infer/s | p50 ms | p90 ms | p99 ms | server queue ms | "
        "server compute ms | runs with a result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(set(runs) | set(failed), key=lambda k: (k[0], k[1])):
        reps = runs.get(key, [])

        def median(column: str, scale: float = 1e-3, reps: list[dict[str, float]] = reps) -> str:
            values = [r[column] * scale for r in reps if column in r]
            return f"{statistics.median(values):,.2f}" if values else "-"

        compute = [
            sum(r.get(c, 0.0) for c in ("Server Compute Input", "Server Compute Infer",
                                        "Server Compute Output")) / 1e3
            for r in reps
        ]  # fmt: skip
        total = len(reps) + failed.get(key, 0)
        lines.append(
            f"| {key[0]} | {key[1]} | {median('Inferences/Second', 1.0)} | "
            f"{median('p50 latency')} | {median('p90 latency')} | {median('p99 latency')} | "
            f"{median('Server Queue')} | "
            f"{f'{statistics.median(compute):,.2f}' if compute else '-'} | {len(reps)} of {total} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
