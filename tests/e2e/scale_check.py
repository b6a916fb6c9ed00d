"""Failover through docker-compose.yml's `scale` profile, driven from the host.

Called by scripts/container_test.sh (not collected by pytest), against HAProxy's published port:

  scale_check.py --target 127.0.0.1:PORT --stats http://127.0.0.1:STATS/ --model char-lstm
                 --repository DIR --kill-command 'docker kill -s KILL PROJECT-{server}-1'

Opens --sessions sessions through the proxy (half fed by Stream calls, half by unary Step calls),
feeds each the first half of its own token sequence, finds the replica holding the most open
streams in HAProxy's stats, kills it with --kill-command ({server} is HAProxy's server name, the
compose service), and feeds the second half through the client library, which carries every
session over to the survivor. Each session's outputs must equal those of the same sequence run
uninterrupted through the proxy afterwards (bit for bit) and match onnxruntime run here on the
same model file (within tolerance). Prints how many sessions were lost (must be 0) and timings.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from container_check import CheckFailed, FloatArray, Reference, compare, split, token_sequence
from rnnserve.client import Client, StepOutput

CLIENT_ID = "scale-check"
# Messages per session: the first half before the kill, the second half after it. Uneven sizes
# on purpose (single steps and chunks).
CHUNKS = (1, 5, 2, 9, 1, 4, 7, 3)
KILL_AFTER = 4
BACKEND = "rnnserve"


def proxy_servers(stats_url: str) -> dict[str, dict[str, str]]:
    """HAProxy's CSV stats rows of the rnnserve backend's servers, by server name."""
    with urllib.request.urlopen(stats_url.rstrip("/") + "/;csv", timeout=10) as response:
        text = response.read().decode("utf-8").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        row["svname"]: row
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll `condition` until it holds; seconds it took. CheckFailed after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise CheckFailed(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def as_arrays(result: StepOutput) -> dict[str, FloatArray]:
    """Every output of one reply as an array [steps, *shape]."""
    arrays: dict[str, FloatArray] = {}
    for name, output in result.outputs.items():
        if output.tensor is None:
            raise CheckFailed(f"reply without a tensor for output {name!r}")
        arrays[name] = np.asarray(output.tensor)
    return arrays


def joined(replies: list[dict[str, FloatArray]]) -> dict[str, FloatArray]:
    """Replies of consecutive messages joined along the step axis."""
    return {name: np.concatenate([reply[name] for reply in replies]) for name in replies[0]}


class Feeder:
    """One session fed message by message, by a Stream call or by unary Step calls."""

    def __init__(self, client: Client, model: str, streamed: bool) -> None:
        self.session = client.session(model)
        self.stream = self.session.open_stream() if streamed else None
        self.replies: list[dict[str, FloatArray]] = []

    def feed(self, tokens: list[int]) -> StepOutput:
        result = (self.stream or self.session).feed(tokens)
        self.replies.append(as_arrays(result))
        return result

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.session.close()


def run(args: argparse.Namespace) -> int:
    reference = Reference.load(args.repository, args.model)
    total = sum(CHUNKS)
    sequences = [
        token_sequence(reference.vocabulary_size, total, seed) for seed in range(args.sessions)
    ]
    messages = [split(tokens, CHUNKS) for tokens in sequences]
    lost: dict[int, str] = {}
    with Client(args.target, client_id=CLIENT_ID, timeout=30.0) as client:
        feeders = [Feeder(client, args.model, index % 2 == 0) for index in range(args.sessions)]
        for index, feeder in enumerate(feeders):
            for piece in messages[index][:KILL_AFTER]:
                feeder.feed(piece)
        servers = proxy_servers(args.stats)
        open_streams = {name: int(row["scur"] or 0) for name, row in servers.items()}
        victim = max(open_streams, key=lambda name: open_streams[name])
        if open_streams[victim] == 0 or len(servers) < 2:
            raise CheckFailed(f"no replica holds an open stream to kill: {open_streams}")
        print(
            f"scale: {args.sessions} sessions mid-sequence through the proxy; open streams per "
            f"replica {open_streams}; kill -9 of {victim}"
        )

        command = shlex.split(args.kill_command.format(server=victim))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        killed_at = time.monotonic()
        first_reply_s: float | None = None
        for index, feeder in enumerate(feeders):
            try:
                for piece in messages[index][KILL_AFTER:]:
                    result = feeder.feed(piece)
                    if first_reply_s is None:
                        first_reply_s = time.monotonic() - killed_at
                if result.step_count != total:
                    raise CheckFailed(f"step_count {result.step_count}, expected {total}")
                feeder.close()
            except Exception as error:  # every failure counts as a lost session
                lost[index] = f"{type(error).__name__}: {error}"
        resumed_s = time.monotonic() - killed_at
        wait_for(
            f"HAProxy marking {victim} DOWN",
            lambda: proxy_servers(args.stats)[victim]["status"].startswith("DOWN"),
            15,
        )

        # The same sequences again, uninterrupted (on the survivor), and onnxruntime here.
        for index, feeder in enumerate(feeders):
            if index in lost:
                continue
            uninterrupted = Feeder(client, args.model, index % 2 == 0)
            for piece in messages[index]:
                uninterrupted.feed(piece)
            uninterrupted.close()
            got, want = joined(feeder.replies), joined(uninterrupted.replies)
            if any(not np.array_equal(got[name], want[name]) for name in want):
                lost[index] = "outputs differ from an uninterrupted run"
                continue
            try:
                compare(got, reference.run(sequences[index]), f"session {index}")
            except CheckFailed as failure:
                lost[index] = str(failure)

    for index, reason in sorted(lost.items()):
        print(f"  session {index} lost: {reason}", file=sys.stderr)
    kept = args.sessions - len(lost)
    print(
        f"scale: sessions lost after kill -9 of {victim}: {len(lost)} of {args.sessions}; "
        f"{kept} finished all {total} steps with outputs equal to an uninterrupted run (bit for "
        f"bit) and to onnxruntime; first reply {first_reply_s or 0.0:.2f} s after the kill, all "
        f"sessions finished {resumed_s:.2f} s after it; HAProxy reports {victim} DOWN"
    )
    return 1 if lost else 0


def main() -> int:
    """CLI entry point; exit status 1 when a session was lost or a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HAProxy's published gRPC address")
    parser.add_argument("--stats", required=True, help="HAProxy's stats page URL")
    parser.add_argument("--model", default="char-lstm")
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument(
        "--kill-command", required=True, help="kills one replica; {server} is its HAProxy name"
    )
    args = parser.parse_args()
    try:
        return run(args)
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
