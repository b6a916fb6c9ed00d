"""BatchScheduler: continuous batching of every pending step of one model version into one call."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

import numpy as np
import numpy.typing as npt
from rnnserve.server import metrics
from rnnserve.server.domain import FloatArray, ModelStatistics
from rnnserve.server.errors import DeadlineExceeded, Overloaded, ShuttingDown
from rnnserve.server.runtime import OnnxModel
from rnnserve.server.state_store import StateStore
from rnnserve.server.step_request import ModelCall, RequestStatus, StepRequest, commit_rows
from rnnserve.server.worker import ModelWorker, RunResult, timed_run

log = logging.getLogger(__name__)

# How close to its deadline a finished step may still commit (see _deliver).
_DEADLINE_MARGIN_S = 0.002


class BatchScheduler:
    """Runs the steps of one model version, many sessions per onnxruntime call.

    Continuous batching: each dispatch takes every queued request (up to max_batch_size),
    groups them by their number of steps, and runs each group as one [batch, steps] call in
    the model's worker thread; requests that arrive meanwhile form the next batch, so an idle
    server adds no waiting time and a busy one batches as much as it can. A message of many
    steps (a chunk, a prompt) runs as one call over its steps, batched with the other messages
    of the same length; so a chunk never costs one call per step, and sessions stepping one
    token at a time keep batching together. (Padding to a common length is not possible
    without masking inside the graph: the state after padded steps would be wrong.) A message
    longer than `max_steps_per_call` runs in segments of that many steps, going back to the
    queue between them, so a long prompt cannot stall the model's other sessions for its
    whole length.

    The scheduler is driven by callbacks, not a task: a submit on an idle scheduler schedules
    one dispatch for the end of the current loop iteration (so every request submitted in that
    iteration joins the batch), and the worker's completion callback delivers the results and
    launches the next batch at once. A step thus costs three loop iterations and two thread
    hand-offs, with no extra task switches. A small call (at most `inline_max_tokens` tokens)
    skips the hand-offs: it runs on the loop thread and is delivered within the dispatch.

    States are gathered from the StateStore just before the call. When a message's last segment
    returns, the store commits all of its session's state (rows, last output, step count) on the
    event loop thread, only for requests whose future is still wanted; a request whose task is
    cancelled after that commit is rolled back by `abandon`.
    """

    max_steps_per_call = 256
    # Under light load, calls of at most this many tokens (batch x steps) run inline on the
    # event loop thread: onnxruntime needs ~70 us for one token of the 2x256 LSTM, while the
    # hand-off to the worker thread and back costs ~300 us of CPU (two thread wake-ups, three GIL
    # hand-overs). "Light" is judged by the recent calls' mean number of sequences too: under
    # load a small call would keep the loop from reading the messages that form the next, bigger
    # batch, and batches would stay small. (Sequences, not tokens: a long prompt says nothing
    # about load and must not send the session's next steps to the worker.) Bigger calls go to
    # the worker, and the loop reads on meanwhile.
    inline_max_tokens = 4

    def __init__(
        self, model: OnnxModel, store: StateStore, *, max_batch_size: int, max_queue: int
    ) -> None:
        self.model = model
        self.store = store
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        # Session steps are served first; stateless rows (Predict) fill what they leave, with a
        # quarter of every batch kept for them so they never starve. A big Predict then delays a
        # streaming session by one batch at most, not by all of its rows.
        self._queue: deque[StepRequest] = deque()
        self._bulk: deque[StepRequest] = deque()
        # groups taken from the queue and waiting for the worker (a batch of mixed lengths)
        self._groups: deque[list[StepRequest]] = deque()
        self._call: ModelCall | None = None  # the group in the worker now
        self._dispatch_scheduled = False
        # One timer for the whole queue, armed at or before the earliest deadline of a queued
        # request: it fails the requests whose deadline passed while they waited. (A timer per
        # request cost a TimerHandle, a heap push and a cancel on every message.)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: ModelWorker | None = None
        self._closed = False
        self._call_seconds = 0.001  # moving average of one call, for the Overloaded retry hint
        self._call_batch = 1.0  # moving average of sequences per call, to tell light load
        self._label = model.manifest.name
        self.statistics = ModelStatistics(model.manifest.name, model.version)
        # labelled metric children, looked up once (labels() costs a lock and a dict lookup)
        self._queue_time = metrics.QUEUE_TIME.labels(self._label)
        self._compute_time = metrics.COMPUTE_TIME.labels(self._label)
        self._batch_size = metrics.BATCH_SIZE.labels(self._label)
        self._steps = metrics.STEPS.labels(self._label)

    def start(self) -> None:
        """Start the worker thread (call on the event loop that will submit)."""
        self._loop = asyncio.get_running_loop()
        self._worker = ModelWorker(f"ort-{self.model.key}", self._loop)

    def submit(
        self, inputs: npt.NDArray[np.generic], slot: int | None, deadline: float | None = None
    ) -> StepRequest:
        """Queue one message (inputs [steps] or [steps, width]); await `request.future`."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        waiting = len(self._queue) + len(self._bulk)
        if waiting >= self.max_queue:
            retry = self._call_seconds * (waiting / self.max_batch_size + 1)
            raise Overloaded(
                f"model {self.model.key} has {waiting} messages queued (max_queue "
                f"{self.max_queue}); retry shortly",
                retry_after_s=max(0.005, retry),
            )
        assert self._loop is not None, "start() the scheduler first"
        future: asyncio.Future[list[FloatArray]] = self._loop.create_future()
        request = StepRequest(inputs, slot, deadline, future)
        self._enqueue(request)
        if self._call is None and not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)
        return request

    def withdraw(self, request: StepRequest) -> bool:
        """Take a request out of the queue if it has not started; True if it was removed."""
        if request.status is not RequestStatus.QUEUED:
            return False
        try:
            self._queue_of(request).remove(request)
        except ValueError:
            return False
        request.status = RequestStatus.DONE
        if not request.future.done():
            request.future.cancel()
        return True

    def _enqueue(self, request: StepRequest) -> None:
        """Queue a request (new, or a long message's next segment), minding its deadline."""
        self._queue_of(request).append(request)
        if request.deadline is not None and request.deadline < self._deadline_at:
            self._arm(request.deadline)

    def _arm(self, when: float) -> None:
        """(Re)arm the queue's deadline timer for `when`."""
        assert self._loop is not None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        # loop.time() is time.monotonic(), the clock deadlines are given in
        self._deadline_timer = self._loop.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        """The earliest deadline in the queue came: fail every queued request whose deadline
        passed (state untouched), then wait for the next deadline."""
        self._deadline_timer, self._deadline_at = None, math.inf
        now = time.monotonic()
        for queue in (self._queue, self._bulk):
            for request in [r for r in queue if r.deadline is not None and r.deadline <= now]:
                queue.remove(request)
                _expire(request)
        # (a deadline a nanosecond away counts as upcoming: the timer comes again for it)
        upcoming = [
            r.deadline for q in (self._queue, self._bulk) for r in q if r.deadline is not None
        ]
        if upcoming:
            self._arm(min(upcoming))

    def abandon(self, request: StepRequest) -> None:
        """The awaiting task gave up (cancelled): drop the request, undo its commit if made."""
        if self.withdraw(request):
            return
        if not request.future.done():
            request.future.cancel()  # delivery skips the commit of a cancelled future
            return
        if request.commit is not None:
            self.store.roll_back(request.commit, request.commit_row)
            request.commit = None

    async def stop(self) -> None:
        """Refuse new requests, fail every waiting or running one with ShuttingDown, end the thread.

        A call still inside onnxruntime finishes in its thread, but its results are dropped: its
        requests have already failed, so nothing is committed after stop().
        """
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer, self._deadline_at = None, math.inf
        error = ShuttingDown("the server is shutting down")
        self._fail([*self._queue, *self._bulk], error)
        self._queue.clear()
        self._bulk.clear()
        self._fail_taken(error)
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _dispatch(self) -> None:
        """Launch the next group if the worker is free (loop thread)."""
        self._dispatch_scheduled = False
        if self._call is not None or self._closed:
            return
        try:
            while True:
                if not self._groups:
                    if not self._queue and not self._bulk:
                        return
                    groups: dict[int, list[StepRequest]] = {}
                    for request in self._take_batch():
                        groups.setdefault(self._segment(request), []).append(request)
                    self._groups.extend(groups.values())
                    continue
                group = [r for r in self._groups.popleft() if not r.future.done()]
                if group and self._launch(group):
                    return
        except Exception as err:  # a bug here must not stop every session of the model
            log.exception("scheduler error for %s", self.model.key)
            self._fail_taken(err)
            if (self._queue or self._bulk) and self._loop is not None:
                self._dispatch_scheduled = True
                self._loop.call_soon(self._dispatch)

    def _queue_of(self, request: StepRequest) -> deque[StepRequest]:
        return self._queue if request.slot is not None else self._bulk

    def _take_batch(self) -> list[StepRequest]:
        """Up to max_batch_size live requests, session steps first; expired ones fail."""
        now = time.monotonic()
        kept_for_bulk = min(len(self._bulk), self.max_batch_size // 4)
        batch = self._take(self._queue, self.max_batch_size - kept_for_bulk, now)
        batch += self._take(self._bulk, self.max_batch_size - len(batch), now)
        return batch

    def _take(self, queue: deque[StepRequest], room: int, now: float) -> list[StepRequest]:
        """Up to `room` live requests from the head of `queue`."""
        batch: list[StepRequest] = []
        while queue and len(batch) < room:
            request = queue.popleft()
            if request.future.done():  # cancelled while queued
                request.status = RequestStatus.DONE
                continue
            if request.deadline is not None and now > request.deadline:
                _expire(request)
                continue
            request.status = RequestStatus.RUNNING
            self._queue_time.observe(now - request.enqueued_at)
            self.statistics.queue_s += now - request.enqueued_at
            batch.append(request)
        return batch

    def _segment(self, request: StepRequest) -> int:
        """Steps the request's next call covers."""
        return min(request.steps - request.offset, self.max_steps_per_call)

    def _launch(self, group: list[StepRequest]) -> bool:
        """Run one group (same segment length) as one onnxruntime call.

        A small call runs inline on the loop thread and is delivered before this returns
        (False); a bigger one goes to the worker thread (True: the worker is now busy).
        """
        call = ModelCall.build(self.store, group, self._segment(group[0]))
        self._call_batch = 0.9 * self._call_batch + 0.1 * len(call.order)
        if len(call.order) * call.steps <= self.inline_max_tokens and (
            self._call_batch <= self.inline_max_tokens
        ):
            self._complete(call, *timed_run(self.model.run, call.inputs, call.states))
            return False
        assert self._worker is not None
        self._call = call
        self._worker.call(self.model.run, call.inputs, call.states, self._on_done)
        return True

    def _on_done(
        self, result: RunResult | None, error: BaseException | None, seconds: float
    ) -> None:
        """The worker finished a call (loop thread): deliver it, then launch the next group."""
        call, self._call = self._call, None
        if call is None:  # stop() failed its requests already
            return
        self._complete(call, result, error, seconds)
        self._dispatch()

    def _complete(
        self, call: ModelCall, result: RunResult | None, error: BaseException | None, seconds: float
    ) -> None:
        """Deliver one finished call (loop thread); `seconds` is the time inside the model."""
        try:
            if error is not None or result is None:
                log.error("onnxruntime call failed for %s: %r", self.model.key, error)
                self._fail(call.order, error or RuntimeError("no result"))
            else:
                self._call_seconds = 0.8 * self._call_seconds + 0.2 * seconds
                self._compute_time.observe(seconds)
                self._batch_size.observe(len(call.order))
                self._steps.inc(len(call.order) * call.steps)
                self._count(len(call.order), seconds)
                outputs, new_states = result
                self._deliver(call.order, call.steps, call.states, outputs, new_states)
        except Exception as err:
            log.exception("delivering results failed for %s", self.model.key)
            self._fail(call.order, err)

    def _count(self, sequences: int, seconds: float) -> None:
        statistics = self.statistics
        statistics.inferences += sequences
        statistics.executions += 1
        statistics.compute_s += seconds * sequences
        statistics.last_inference = time.time()

    def _fail_taken(self, error: BaseException) -> None:
        """Fail every request taken from the queue: the waiting groups and the running call."""
        for group in self._groups:
            self._fail(group, error)
        self._groups.clear()
        if self._call is not None:
            self._fail(self._call.order, error)
            self._call = None

    @staticmethod
    def _fail(group: list[StepRequest], error: BaseException) -> None:
        for request in group:
            request.status = RequestStatus.DONE
            if not request.future.done():
                request.future.set_exception(error)

    def _deliver(
        self,
        order: list[StepRequest],
        steps: int,
        states: list[FloatArray],
        outputs: list[FloatArray],
        new_states: list[FloatArray],
    ) -> None:
        """Commit finished requests, resolve their futures, requeue unfinished ones.

        Runs on the loop thread with no await, so a request's commit (all of its session's
        state, in one StateStore.commit) and its result are one atomic event for every other task.
        """
        specs = self.store.specs
        finished: list[int] = []
        # A caller whose deadline passed while its call ran has been told DEADLINE_EXCEEDED (or is
        # about to be): committing now would advance a state the client believes unchanged.
        # The margin covers the caller's clock running slightly ahead of ours.
        late = time.monotonic() + _DEADLINE_MARGIN_S
        for index, request in enumerate(order):
            if request.future.done():  # cancelled meanwhile: no commit
                request.status = RequestStatus.DONE
                continue
            if request.deadline is not None and late > request.deadline:
                request.status = RequestStatus.DONE
                request.future.set_exception(
                    DeadlineExceeded("the deadline passed while the step ran; state unchanged")
                )
                continue
            request.offset += steps
            if request.offset < request.steps:
                if request.slot is not None and request.carry is None:
                    request.before = [
                        np.take(s, [index], axis=p.batch_axis)
                        for p, s in zip(specs, states, strict=True)
                    ]
                request.carry = [
                    np.take(s, [index], axis=p.batch_axis)
                    for p, s in zip(specs, new_states, strict=True)
                ]
                request.pieces.append([o[index] for o in outputs])
                request.status = RequestStatus.QUEUED
                request.enqueued_at = time.monotonic()
                self._enqueue(request)
            else:
                finished.append(index)
        committing = [i for i in finished if order[i].slot is not None]
        if committing:
            commit_rows(self.store, order, committing, states, outputs, new_states)
        for index in finished:
            request = order[index]
            request.status = RequestStatus.DONE
            rows = [o[index] for o in outputs]
            if request.pieces:
                rows = [
                    np.concatenate([*(piece[j] for piece in request.pieces), row])
                    for j, row in enumerate(rows)
                ]
                request.pieces = []
            request.carry = None
            request.future.set_result(rows)


def _expire(request: StepRequest) -> None:
    """A request whose deadline passed while it was queued: it fails, the state untouched."""
    request.status = RequestStatus.DONE
    if not request.future.done():
        request.future.set_exception(
            DeadlineExceeded("the deadline passed while the step was queued; state unchanged")
        )
