"""`python bench/ab.py REV`: rnnserve at git revision REV (A) against this working tree (B).

Both servers run at once on the same model; one load generator drives them in turn, repetition
by repetition, so that both see the same machine noise. Each run reports tokens/s and the server's
CPU per message, split into the event loop's thread and the others (bench/cpu_split.py). A is a
`git worktree` of REV in a temporary folder, imported ahead of this tree through PYTHONPATH (the
same virtual environment serves both). This is how each change of docs/benchmarks.md's
"The per-message pass" was measured.

    python bench/ab.py HEAD~1                        # 64 streams, 4 pairs of 3 s
    python bench/ab.py main -c 1 64 -n 5 --mode generate
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from cpu_split import Split, add_load_arguments, measure
from model import NAME, bench_repository
from servers import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("service", "client", "models", "protos")


def start(name: str, root: Path, repository: Path, logs: Path) -> ServerProcess:
    """rnnserve from the source tree at `root`."""
    port = free_port()
    command = [
        str(REPO / ".venv" / "bin" / "python"), "-m", "rnnserve.server.cli", "serve",
        "--model-repository", str(repository), "--models", NAME,
        "--port", str(port), "--metrics-port", "-1", "--log-level", "warning",
    ]  # fmt: skip
    path = ":".join(str(root / folder) for folder in SOURCE_FOLDERS)
    return ServerProcess(name, command, port, logs / f"{name}.log", PYTHONPATH=path)


def compare(servers: dict[str, ServerProcess], args: argparse.Namespace) -> None:
    """Alternate the load between the servers, pair by pair; print each run and the medians."""
    for concurrency in args.concurrency:
        runs: dict[str, list[Split]] = {name: [] for name in servers}
        for pair in range(args.pairs):
            for name, server in servers.items():
                split = measure(server, concurrency, args.duration, mode=args.mode)
                runs[name].append(split)
                print(
                    f"{args.mode} x {concurrency} pair {pair + 1} {name}: "
                    f"{split.tokens_per_s:8,.0f} tok/s  loop {split.loop_us:5.0f}  "
                    f"other {split.other_us:5.0f} us/msg  errors {split.errors}",
                    flush=True,
                )
        for name, splits in runs.items():
            print(
                f"{args.mode} x {concurrency} {name} medians: "
                f"{statistics.median(s.tokens_per_s for s in splits):,.0f} tok/s, loop "
                f"{statistics.median(s.loop_us for s in splits):.0f} us/msg, other "
                f"{statistics.median(s.other_us for s in splits):.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare against (A)")
    parser.add_argument("-n", "--pairs", type=int, default=4)
    add_load_arguments(parser, concurrency=[64], duration_s=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnserve-ab-") as work:
        logs = Path(work)
        worktree = logs / "a"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "--detach", str(worktree), args.rev], check=True)
        servers: dict[str, ServerProcess] = {}
        try:
            repository, _ = bench_repository(logs, random_model=not args.shipped_model)
            print(f"A = {args.rev}, B = this working tree")
            servers["A"] = start("A", worktree, repository, logs)
            servers["B"] = start("B", REPO, repository, logs)
            compare(servers, args)
        finally:
            for server in servers.values():
                server.stop()
            subprocess.run([*git, "remove", "--force", str(worktree)], check=False)


if __name__ == "__main__":
    main()
