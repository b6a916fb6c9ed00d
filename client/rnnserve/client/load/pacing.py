"""When each message may go (closed or open loop) and when the run must stop."""

from __future__ import annotations

import asyncio
import time


class Bounds:
    """The run's shared stop conditions: a deadline, a message count and a session count.

    Workers share one Bounds on one event loop, so plain counters need no lock.
    """

    def __init__(
        self, *, deadline: float | None, messages: int | None, sessions: int | None
    ) -> None:
        self.deadline = deadline  # perf_counter() value
        self.messages_left = messages
        self.sessions_left = sessions
        self.stopped = False

    def expired(self) -> bool:
        """True once the deadline has passed or stop() was called."""
        if self.stopped:
            return True
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            self.stopped = True
        return self.stopped

    def take_message(self) -> bool:
        """Reserve one timed message; False when the run is over."""
        if self.expired():
            return False
        if self.messages_left is not None:
            if self.messages_left <= 0:
                return False
            self.messages_left -= 1
        return True

    def take_session(self) -> bool:
        """Reserve one session; False when the run is over."""
        if self.expired() or self.messages_left == 0:
            return False
        if self.sessions_left is not None:
            if self.sessions_left <= 0:
                return False
            self.sessions_left -= 1
        return True

    def stop(self) -> None:
        self.stopped = True


class Pacer:
    """Gives each message its reference send time.

    Closed loop: now. Open loop: this worker's next slot on a fixed schedule (one slot every
    `interval` seconds, offset so workers interleave); it sleeps until the slot and returns the
    slot's time even when late, so lateness counts as latency.
    """

    def __init__(self, interval: float | None, offset: float, start: float) -> None:
        self.interval = interval
        self._next = start + offset

    async def wait(self) -> float:
        now = time.perf_counter()
        if self.interval is None:
            return now
        slot = self._next
        self._next += self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
        return slot
