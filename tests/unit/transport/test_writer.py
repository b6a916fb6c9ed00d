"""PacedWriter: a bounded wait for each write, one watchdog per call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rnnserve.server.transport.writer import PacedWriter


class FakeContext:
    """A server context whose writes take as long as the test says."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.written: list[Any] = []
        self.headers: list[Any] = []

    async def send_initial_metadata(self, headers: Any) -> None:
        self.headers.append(headers)

    async def write(self, message: Any) -> None:
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0.0)
        self.written.append(message)


async def test_writes_each_within_the_timeout_all_pass_however_long_the_call() -> None:
    # the limit is per write: ten writes of 20 ms under a 50 ms limit (200 ms in all) all pass
    context = FakeContext()
    context.delays = [0.02] * 10
    writer = PacedWriter(context, timeout_s=0.05)
    results = [await writer.write(index, headers=(("k", "v"),)) for index in range(10)]
    writer.close()
    assert results == [True] * 10
    assert context.written == list(range(10))
    assert context.headers == [(("k", "v"),)]  # the headers go out once, first


async def test_a_write_that_waits_past_the_timeout_says_false_and_leaves_the_task_usable() -> None:
    context = FakeContext()
    context.delays = [0.0, 5.0]
    writer = PacedWriter(context, timeout_s=0.05)
    assert await writer.write("first")
    started = asyncio.get_running_loop().time()
    assert not await writer.write("stuck")
    assert asyncio.get_running_loop().time() - started < 1.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancellation left pending on the task
    writer.close()


async def test_a_cancelled_call_raises_instead_of_timing_out() -> None:
    context = FakeContext()
    context.delays = [5.0]
    writer = PacedWriter(context, timeout_s=10.0)
    task = asyncio.create_task(writer.write("never"))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writer.close()


async def test_the_watchdog_waits_for_the_write_pending_when_it_fires() -> None:
    # the watchdog armed by a quick first write finds a later write pending for less than the
    # limit: that write is given its own full limit
    context = FakeContext()
    context.delays = [0.0, 0.04, 0.06]
    writer = PacedWriter(context, timeout_s=0.05)
    assert await writer.write(1)
    await asyncio.sleep(0.03)
    assert await writer.write(2)  # pending at the first limit (50 ms), for 20 ms only
    assert not await writer.write(3)
    writer.close()
