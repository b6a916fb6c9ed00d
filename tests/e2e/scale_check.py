"""Failover through docker-compose.yml's `scale` profile, driven from the host.

Called by scripts/container_test.sh (not collected by pytest), against HAProxy's published port:

  scale_check.py --target 127.0.0.1:PORT --stats http://127.0.0.1:STATS/ --model char-lstm
                 --repository DIR --kill-command 'docker kill -s KILL PROJECT-{server}-1'
                 [--start-command 'docker start PROJECT-{server}-1'
                  --pause-command 'docker pause PROJECT-{server}-1'
                  --unpause-command 'docker unpause PROJECT-{server}-1']

Kill: opens --sessions sessions through the proxy (half fed by Stream calls, half by unary Step
calls), feeds each the first half of its own token sequence, finds the replica holding the most
open streams in HAProxy's stats, kills it with --kill-command ({server} is HAProxy's server name,
the compose service), and feeds the second half through the client library, which carries every
session over to the survivor.
Stale replica (with --start-command): the killed replica is started again; new sessions are fed
a third of their sequence, the busiest replica is frozen (its sessions stay in its memory), the
next third moves them to the other replica, the frozen one is thawed and back in the proxy while
some sessions' calls still go to it, and the last third is fed.
Each session's outputs must equal those of the same sequence run uninterrupted through the proxy
afterwards (bit for bit) and match onnxruntime run here on the same model file (within
tolerance). Prints how many sessions were lost (must be 0) and timings.
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


class Scenario:
    """`count` sessions through the proxy, each with its own token sequence, fed in phases;
    a session whose feeds fail or whose outputs differ counts as lost."""

    def __init__(
        self, client: Client, reference: Reference, model: str, count: int, seed: int
    ) -> None:
        self.client, self.reference, self.model = client, reference, model
        total = sum(CHUNKS)
        self.sequences = [
            token_sequence(reference.vocabulary_size, total, seed + index) for index in range(count)
        ]
        self.messages = [split(tokens, CHUNKS) for tokens in self.sequences]
        self.feeders = [Feeder(client, model, index % 2 == 0) for index in range(count)]
        self.lost: dict[int, str] = {}

    def feed(self, start: int, stop: int) -> float:
        """Messages [start, stop) of every session, in turn; seconds to the first reply."""
        began, first_reply_s = time.monotonic(), None
        for index, feeder in enumerate(self.feeders):
            if index in self.lost:
                continue
            try:
                for piece in self.messages[index][start:stop]:
                    result = feeder.feed(piece)
                    if first_reply_s is None:
                        first_reply_s = time.monotonic() - began
                expected = sum(CHUNKS[:stop])
                if result.step_count != expected:
                    raise CheckFailed(f"step_count {result.step_count}, expected {expected}")
            except Exception as error:  # every failure counts as a lost session
                self.lost[index] = f"{type(error).__name__}: {error}"
        return first_reply_s or 0.0

    def finish(self) -> None:
        """Close every session, then compare its outputs with the same sequence run again
        uninterrupted through the proxy (bit for bit) and with onnxruntime (tolerance)."""
        for index, feeder in enumerate(self.feeders):
            if index in self.lost:
                continue
            try:
                feeder.close()
                uninterrupted = Feeder(self.client, self.model, index % 2 == 0)
                for piece in self.messages[index]:
                    uninterrupted.feed(piece)
                uninterrupted.close()
                got, want = joined(feeder.replies), joined(uninterrupted.replies)
                if any(not np.array_equal(got[name], want[name]) for name in want):
                    raise CheckFailed("outputs differ from an uninterrupted run")
                compare(got, self.reference.run(self.sequences[index]), f"session {index}")
            except Exception as error:  # every failure counts as a lost session
                self.lost[index] = f"{type(error).__name__}: {error}"

    def report(self, what: str) -> bool:
        """Print the count of lost sessions (and why each was lost); True if none was."""
        for index, reason in sorted(self.lost.items()):
            print(f"  session {index} lost: {reason}", file=sys.stderr)
        count = len(self.feeders)
        print(
            f"scale: {what}: sessions lost {len(self.lost)} of {count}; "
            f"{count - len(self.lost)} finished all {sum(CHUNKS)} steps with outputs equal to an "
            "uninterrupted run (bit for bit) and to onnxruntime"
        )
        return not self.lost


def busiest(stats_url: str) -> str:
    """The replica with the most open streams in HAProxy's stats (CheckFailed if none has one)."""
    servers = proxy_servers(stats_url)
    open_streams = {name: int(row["scur"] or 0) for name, row in servers.items()}
    victim = max(open_streams, key=lambda name: open_streams[name])
    if open_streams[victim] == 0 or len(servers) < 2:
        raise CheckFailed(f"no replica holds an open stream: {open_streams}")
    print(f"scale: open streams per replica {open_streams}")
    return victim


def wait_status(stats_url: str, server: str, status: str) -> float:
    """Seconds until HAProxy reports `server` with `status` (UP or DOWN)."""
    return wait_for(
        f"HAProxy reporting {server} {status}",
        lambda: proxy_servers(stats_url)[server]["status"].startswith(status),
        30,
    )


# HAProxy marks a server DOWN after 2 failed checks 1 s apart (deploy/haproxy/haproxy.cfg).
SETTLE_S = 3.0


def wait_settled_up(stats_url: str, server: str) -> None:
    """Until HAProxy has reported `server` UP for SETTLE_S without a break.

    A replica killed with `docker kill` can be started twice: by the check's start command and
    by the container's own restart policy, whose second start replaces the process HAProxy just
    found healthy with one that is still starting (and refuses calls with UNAVAILABLE).
    """
    up_since: list[float] = []

    def settled() -> bool:
        if not proxy_servers(stats_url)[server]["status"].startswith("UP"):
            up_since.clear()
            return False
        if not up_since:
            up_since.append(time.monotonic())
        return time.monotonic() - up_since[0] >= SETTLE_S

    wait_for(f"HAProxy reporting {server} UP for {SETTLE_S:.0f} s", settled, 60)


DOCKER_TRIES = 5  # `docker pause` can fail to freeze a busy container ("unable to freeze")


def docker(template: str, server: str) -> None:
    """Run one of the --*-command templates for HAProxy server `server`; a command the engine
    refuses is tried again (up to DOCKER_TRIES times, 2 s apart) before the check fails."""
    command = shlex.split(template.format(server=server))
    for attempt in range(1, DOCKER_TRIES + 1):
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0:
            return
        print(f"{command[:2]} failed (try {attempt} of {DOCKER_TRIES}): {done.stderr.strip()}")
        time.sleep(2)
    raise subprocess.CalledProcessError(done.returncode, command, stderr=done.stderr)


def kill_scenario(
    args: argparse.Namespace, client: Client, reference: Reference
) -> tuple[bool, str]:
    """kill -9 of the busiest replica with every session halfway through its sequence; whether
    no session was lost, and the replica killed."""
    scenario = Scenario(client, reference, args.model, args.sessions, seed=0)
    scenario.feed(0, KILL_AFTER)
    victim = busiest(args.stats)
    docker(args.kill_command, victim)
    killed_at = time.monotonic()
    first_reply_s = scenario.feed(KILL_AFTER, len(CHUNKS))
    resumed_s = time.monotonic() - killed_at
    wait_status(args.stats, victim, "DOWN")
    scenario.finish()
    print(
        f"scale: kill -9 of {victim}: first reply {first_reply_s:.2f} s after it, all "
        f"{args.sessions} sessions finished {resumed_s:.2f} s after it; HAProxy reports it DOWN"
    )
    return scenario.report(f"kill -9 of {victim} mid-sequence"), victim


def stale_scenario(args: argparse.Namespace, client: Client, reference: Reference) -> bool:
    """The busiest replica frozen (docker pause: its sessions stay in its memory), the sessions
    moved on by the other one, then the frozen one brought back while the proxy still routes
    some sessions to it: it must not serve (or write) its stale copies."""
    scenario = Scenario(client, reference, args.model, args.sessions, seed=1000)
    scenario.feed(0, 3)
    victim = busiest(args.stats)
    docker(args.pause_command, victim)
    paused_at = time.monotonic()
    first_reply_s = scenario.feed(3, 6)
    moved_s = time.monotonic() - paused_at
    docker(args.unpause_command, victim)
    back_s = wait_status(args.stats, victim, "UP")
    calls_before = int(proxy_servers(args.stats)[victim]["stot"] or 0)
    scenario.feed(6, len(CHUNKS))
    # Calls of the last third that the proxy sent to the thawed replica (sticky sessions whose
    # entry still names it): each met a copy there that is older than the one in Redis.
    calls_to_stale = int(proxy_servers(args.stats)[victim]["stot"] or 0) - calls_before
    scenario.finish()
    print(
        f"scale: {victim} frozen: first reply {first_reply_s:.2f} s after the freeze, all "
        f"sessions moved on in {moved_s:.2f} s; back UP in HAProxy {back_s:.2f} s after "
        f"thawing; then {calls_to_stale} calls reached it"
    )
    return scenario.report(f"{victim} frozen, sessions moved on, stale replica brought back")


def run(args: argparse.Namespace) -> int:
    reference = Reference.load(args.repository, args.model)
    with Client(args.target, client_id=CLIENT_ID, timeout=30.0) as client:
        passed, victim = kill_scenario(args, client, reference)
        if args.start_command:
            # The killed replica comes back (a fresh process) for the stale-replica scenario.
            docker(args.start_command, victim)
            wait_settled_up(args.stats, victim)
            passed = stale_scenario(args, client, reference) and passed
    return 0 if passed else 1


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
    parser.add_argument(
        "--start-command", help="starts the killed replica again; given, the stale scenario runs"
    )
    parser.add_argument("--pause-command", help="freezes a replica (stale scenario)")
    parser.add_argument("--unpause-command", help="thaws the frozen replica (stale scenario)")
    args = parser.parse_args()
    if args.start_command and not (args.pause_command and args.unpause_command):
        parser.error("--start-command needs --pause-command and --unpause-command")
    try:
        return run(args)
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
