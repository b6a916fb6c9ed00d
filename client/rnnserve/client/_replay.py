"""Failover replay, without I/O: the inputs a server could still lose, and how to put them back.

With a shared state tier (Redis), a server process that dies loses the steps after the session's
durable step count (none with ``sync`` durability; a bounded window with ``batch``). The survivor
that takes the session over starts from that durable count. A client that kept the inputs of the
steps after it replays them, in order, each guarded by ``expected_step_count``, so the session
reaches the state an uninterrupted run had, and the outputs the user sees next are the same.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import grpc
from rnnserve.client._errors import DataLoss, RnnServeError
from rnnserve.v1 import rnnserve_pb2 as pb

#: How long a session's step keeps being tried while the session moves to a survivor after its
#: process died: the proxy's health check (1-2 s with deploy/haproxy/haproxy.cfg) plus the dead
#: owner's lease in the state tier (owner_lease_s, 10 s by default).
FAILOVER_WAIT_S = 30.0

#: The output asked of a replayed message: none (the user already has its outputs).
REPLAY_OUTPUT = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_NONE)


@dataclass(frozen=True)
class KeptInput:
    """One answered message the server has not yet made durable."""

    start: int
    """The session's step count before the message."""
    end: int
    """The step count after it."""
    step: pb.StepInput


class ReplayLog:
    """The inputs of one session's steps beyond its durable step count, oldest first.

    ``answered`` records each answered message and drops those the server now reports durable.
    Nothing is kept while the server reports no durable count (the in-memory store: a dead
    process's sessions are gone, so replaying could not bring them back).
    """

    def __init__(self) -> None:
        self._kept: deque[KeptInput] = deque()
        self.tracking = False
        """Whether the server reported a durable step count with its last answer."""

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def kept_steps(self) -> int:
        """Steps whose inputs are kept (what a failover may have to replay)."""
        return sum(item.end - item.start for item in self._kept)

    def answered(
        self, start: int, step: pb.StepInput, step_count: int, durable_step_count: int | None
    ) -> None:
        """A message sent at step count `start` was answered: the session is at `step_count`,
        `durable_step_count` of which survive the loss of the server process."""
        if self._kept and self._kept[-1].end != start:
            self._kept.clear()  # stepped out of sight (a stream, a reset): older inputs are moot
        self.tracking = durable_step_count is not None
        if durable_step_count is None:
            self._kept.clear()
            return
        if step_count > durable_step_count:
            self._kept.append(KeptInput(start, step_count, step))
        self.made_durable(durable_step_count)

    def made_durable(self, durable_step_count: int) -> None:
        """The server reports steps up to `durable_step_count` durable: forget their inputs."""
        while self._kept and self._kept[0].end <= durable_step_count:
            self._kept.popleft()

    def clear(self) -> None:
        """Forget everything (the session was reset, closed, or stepped out of sight)."""
        self._kept.clear()

    def plan(self, server_step_count: int, client_step_count: int) -> list[KeptInput]:
        """The kept messages that bring a server at `server_step_count` back to
        `client_step_count`, in order; empty when it is there already.

        Raises:
            DataLoss: the server is behind by steps whose inputs are not kept, or ahead of the
                client (a step ran whose reply never arrived): the outputs of an uninterrupted
                run can no longer be reproduced.
        """
        if server_step_count == client_step_count:
            return []
        if server_step_count > client_step_count:
            raise DataLoss(
                f"the session is at step {server_step_count}, past the {client_step_count} this "
                "client saw: a step ran whose reply was lost",
                field="expected_step_count",
            )
        plan = [item for item in self._kept if item.start >= server_step_count]
        if not plan or plan[0].start != server_step_count or plan[-1].end != client_step_count:
            raise DataLoss(
                f"the session fell back to step {server_step_count} and this client kept the "
                f"inputs of steps {self._kept[0].start if self._kept else client_step_count}"
                f" to {client_step_count} only",
                field="expected_step_count",
            )
        return plan


def unanswered(failure: RnnServeError, resent_ahead: bool) -> RnnServeError:
    """What the failure of a message sent again means. `resent_ahead`: it was sent again to a
    server one message ahead (the message ran and its reply was lost with its process), for the
    server to answer from the reply it keeps; a refusal then means that reply is gone too."""
    if (
        resent_ahead
        and failure.code == grpc.StatusCode.ABORTED
        and failure.field == "expected_step_count"
    ):
        return DataLoss(
            f"a step ran whose reply was lost, and the server could not answer it again "
            f"({failure.message})",
            field="expected_step_count",
        )
    return failure


def failover_wait(failure: RnnServeError, attempt: int, started: float) -> float:
    """Seconds to wait before trying a failed-over step again (attempt 0, 1, ...: 0.1 s doubling
    to 1 s); raises `failure` when it does not say the move is still in progress (UNAVAILABLE)
    or when FAILOVER_WAIT_S since `started` (a ``time.monotonic()``) would be spent."""
    wait = min(1.0, 0.1 * 2.0**attempt)
    in_progress = failure.code == grpc.StatusCode.UNAVAILABLE
    if not in_progress or time.monotonic() + wait > started + FAILOVER_WAIT_S:
        raise failure
    return wait
