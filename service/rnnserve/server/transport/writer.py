"""Writing a server stream's replies one at a time, each within a bounded wait for the client.

What this builds on (grpc 1.85 aio, measured; docs/errors.md, "Generate and a client that stops
reading"):
- `context.write` (and the `yield` of an async-generator handler, which grpc turns into one)
  completes once HTTP/2 flow control admits the message: while the client's receive window has
  room, whether or not the client's application reads. A client that stops reading lets its
  window fill (64 KiB; up to ~4 MiB once grpc's BDP probing has grown it) and the next write then
  waits for as long as the client does, with the handler, its session and its engine work held.
- Cancelling that wait does not take the message back: gRPC still delivers it if the client reads
  again, and a status sent afterwards is queued behind it (the client reads every reply, then the
  status).
- If the call's headers rode in the batch of a write that timed out, grpc would add them again to
  the status batch, which gRPC core refuses, and the call hangs. So the headers go first, on their
  own (they are not flow-controlled: that completes at once).

So the handler writes explicitly, one message at a time, and gives up after `timeout_s`: the
producer (the engine) is asked for the next message only after the previous write completed, so
nothing is computed ahead of what gRPC accepted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from rnnserve.server.settings import Settings

DEFAULT_WRITE_TIMEOUT_S = float(Settings.model_fields["generate_write_timeout_s"].default)


class PacedWriter:
    """Writes replies to one server-streaming call; `write` says False when the client stopped
    reading for `timeout_s`, after which the call must end (its status follows the last reply).

    One watchdog timer per call, not an `asyncio.timeout` per write (a Timeout object, a timer
    armed and cancelled on every token): each write notes when it started, and the watchdog,
    armed at the first pending write's limit, cancels the handler's task only if the write it
    finds pending has been waiting for `timeout_s`; otherwise it waits for that write's limit, or
    sleeps until the next write arms it again. The cancellation becomes False as asyncio.timeout
    turns its own into TimeoutError (the task's cancel count tells it from any other).
    """

    __slots__ = (
        "_context",
        "_expired",
        "_headers_sent",
        "_loop",
        "_task",
        "_watchdog",
        "_writing_since",
        "timeout_s",
    )

    def __init__(self, context: Any, timeout_s: float = DEFAULT_WRITE_TIMEOUT_S) -> None:
        self._context = context
        self._headers_sent = False
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._writing_since: float | None = None  # the pending write's start (loop time)
        self._expired = False  # the watchdog cancelled the task for the pending write

    async def write(self, message: Any, *, headers: tuple[tuple[str, str], ...] = ()) -> bool:
        """Hand `message` to gRPC; False if it was not accepted within `timeout_s`. `headers`
        go out as the call's initial metadata if this is its first write.

        A message that timed out is still delivered if the client reads again: it counts as
        handed over. A call that ended under the write (the client cancelled, its deadline
        passed, the connection or the server closed) raises CancelledError, as grpc's own
        cancellation of the handler does: the race between the two decides which comes first.
        """
        if self._task is None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        assert self._loop is not None and self._task is not None
        self._writing_since = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._writing_since + self.timeout_s, self._check)
        cancelling = self._task.cancelling()
        try:
            if not self._headers_sent:
                await self._context.send_initial_metadata(headers)
                self._headers_sent = True
            await self._context.write(message)
        except asyncio.CancelledError:
            if self._timed_out(cancelling):
                return False
            raise
        except grpc.aio.AbortError:
            raise
        except grpc.aio.BaseError as err:  # ExecuteBatchError, server stopped: the call is over
            raise asyncio.CancelledError(f"the call ended during a write: {err}") from err
        finally:
            self._writing_since = None
        # the write completed as the watchdog fired: its cancellation is withdrawn
        self._timed_out(cancelling)
        return True

    def close(self) -> None:
        """The call is over: stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _timed_out(self, cancelling: int) -> bool:
        """Whether the watchdog's cancellation, and no other, is what ended the write."""
        if not self._expired:
            return False
        self._expired = False
        assert self._task is not None
        return self._task.uncancel() <= cancelling

    def _check(self) -> None:
        """The watchdog: end the pending write if it has waited `timeout_s`."""
        self._watchdog = None
        since = self._writing_since
        if since is None or self._task is None or self._loop is None:
            return  # no write pending: the next one arms the watchdog again
        due = since + self.timeout_s
        if self._loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._watchdog = self._loop.call_at(due, self._check)
