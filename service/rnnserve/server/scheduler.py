"""BatchScheduler: continuous batching of every pending step of one model version into one call."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from rnnserve.server import metrics
from rnnserve.server.errors import DeadlineExceeded, Overloaded, ShuttingDown
from rnnserve.server.runtime import FloatArray, OnnxModel
from rnnserve.server.state_store import StateStore

log = logging.getLogger(__name__)


class RequestStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class StepRequest:
    """One message of input for one sequence: a session's slot, or None for a stateless sequence."""

    __slots__ = (
        "batch_index",
        "batch_states",
        "before",
        "carry",
        "committed",
        "deadline",
        "enqueued_at",
        "future",
        "inputs",
        "offset",
        "pieces",
        "slot",
        "status",
        "steps",
    )

    def __init__(
        self,
        inputs: npt.NDArray[np.generic],
        slot: int | None,
        deadline: float | None,
        future: asyncio.Future[list[FloatArray]],
    ) -> None:
        self.inputs = inputs
        self.steps = int(inputs.shape[0])
        self.slot = slot
        self.deadline = deadline
        self.future = future
        self.enqueued_at = time.monotonic()
        self.status = RequestStatus.QUEUED
        self.committed = False
        # A long message runs in segments: steps done so far, the state carried between its
        # segments (private until the last one commits), and the outputs of done segments.
        self.offset = 0
        self.carry: list[FloatArray] | None = None
        self.pieces: list[list[FloatArray]] = []
        # The state before the message, kept so that a step whose task is cancelled after its
        # commit can be rolled back: the batch's input states and this request's index in them
        # (one segment), or a copy taken at the first of several segments.
        self.batch_states: list[FloatArray] | None = None
        self.batch_index = 0
        self.before: list[FloatArray] | None = None


RunResult = tuple[list[FloatArray], list[FloatArray]]
RunFunction = Callable[[npt.NDArray[np.generic], Sequence[FloatArray]], RunResult]


class ModelWorker:
    """The one thread that runs a model's onnxruntime calls, off the event loop.

    A plain thread fed by a SimpleQueue that resolves an asyncio future with
    call_soon_threadsafe: measured here at ~30 us CPU per round trip against ~48 us for
    loop.run_in_executor (which chains a concurrent.futures.Future into an asyncio one).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[
                asyncio.AbstractEventLoop,
                asyncio.Future[RunResult],
                RunFunction,
                tuple[npt.NDArray[np.generic], Sequence[FloatArray]],
            ]
            | None
        ] = queue.SimpleQueue()
        # daemon: a call stuck in onnxruntime must not keep the process alive at exit
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(
        self, run: RunFunction, inputs: npt.NDArray[np.generic], states: Sequence[FloatArray]
    ) -> asyncio.Future[RunResult]:
        """Queue one call; the returned future resolves on the calling event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunResult] = loop.create_future()
        self._jobs.put((loop, future, run, (inputs, states)))
        return future

    def close(self) -> None:
        """Let the thread finish its current call and exit."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, run, args = job
            try:
                result = run(*args)
            except Exception as err:
                _resolve(loop, future, None, err)
            else:
                _resolve(loop, future, result, None)


def _resolve(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[RunResult],
    result: RunResult | None,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # cancelled by stop() meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class BatchScheduler:
    """Runs the steps of one model version, many sessions per onnxruntime call.

    Continuous batching: a single loop task takes every queued request (up to max_batch_size),
    groups them by their number of steps, and runs each group as one [batch, steps] call in a
    worker thread; requests that arrive meanwhile form the next batch, so an idle server adds no
    waiting time and a busy one batches as much as it can. A message of many steps (a chunk, a
    prompt) runs as one call over its steps, batched with the other messages of the same
    length; so a chunk never costs one call per step, and sessions stepping one token at a time
    keep batching together. (Padding to a common length is not possible without masking inside
    the graph: the state after padded steps would be wrong.) A message longer than
    `max_steps_per_call` runs in segments of that many steps, going back to the queue between
    them, so a long prompt cannot stall every other session of the model for its whole length.

    States are gathered from the StateStore just before the call and scattered back when a
    message's last segment returns, on the event loop thread, only for requests whose future is
    still wanted; a request whose task is cancelled after that commit is rolled back by
    `abandon`.
    """

    max_steps_per_call = 256

    def __init__(
        self, model: OnnxModel, store: StateStore, *, max_batch_size: int, max_queue: int
    ) -> None:
        self.model = model
        self.store = store
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._queue: deque[StepRequest] = deque()
        self._wakeup = asyncio.Event()
        self._worker: ModelWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._call_seconds = 0.001  # moving average of one call, for the Overloaded retry hint
        self._label = model.manifest.name
        # labelled metric children, looked up once (labels() costs a lock and a dict lookup)
        self._queue_time = metrics.QUEUE_TIME.labels(self._label)
        self._compute_time = metrics.COMPUTE_TIME.labels(self._label)
        self._batch_size = metrics.BATCH_SIZE.labels(self._label)
        self._steps = metrics.STEPS.labels(self._label)

    @property
    def queued(self) -> int:
        """Requests waiting for a call."""
        return len(self._queue)

    def start(self) -> None:
        """Start the worker thread and the batching loop (on the running event loop)."""
        self._worker = ModelWorker(f"ort-{self.model.key}")
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"scheduler-{self.model.key}"
        )

    def submit(
        self, inputs: npt.NDArray[np.generic], slot: int | None, deadline: float | None = None
    ) -> StepRequest:
        """Queue one message (inputs [steps] or [steps, width]); await `request.future`."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            retry = self._call_seconds * (len(self._queue) / self.max_batch_size + 1)
            raise Overloaded(
                f"model {self.model.key} has {len(self._queue)} steps queued (max_queue "
                f"{self.max_queue}); retry shortly",
                retry_after_s=max(0.005, retry),
            )
        future: asyncio.Future[list[FloatArray]] = asyncio.get_running_loop().create_future()
        request = StepRequest(inputs, slot, deadline, future)
        self._queue.append(request)
        self._idle.clear()
        self._wakeup.set()
        return request

    def withdraw(self, request: StepRequest) -> bool:
        """Take a request out of the queue if it has not started; True if it was removed."""
        if request.status is not RequestStatus.QUEUED:
            return False
        try:
            self._queue.remove(request)
        except ValueError:
            return False
        request.status = RequestStatus.DONE
        if not request.future.done():
            request.future.cancel()
        return True

    def abandon(self, request: StepRequest) -> None:
        """The awaiting task gave up (cancelled): drop the request, undo its commit if made."""
        if self.withdraw(request):
            return
        if not request.future.done():
            request.future.cancel()  # delivery skips the commit of a cancelled future
            return
        if not request.committed or request.slot is None:
            return
        before = request.before
        if before is None and request.batch_states is not None:
            before = [
                np.take(state, request.batch_index, axis=spec.batch_axis)
                for spec, state in zip(self.store.specs, request.batch_states, strict=True)
            ]
        if before is not None:
            self.store.write(request.slot, before)
        request.committed = False

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        while self._queue or self._running:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Refuse new requests, fail the queued ones with ShuttingDown, stop the loop and thread."""
        self._closed = True
        while self._queue:
            request = self._queue.popleft()
            request.status = RequestStatus.DONE
            if not request.future.done():
                request.future.set_exception(ShuttingDown("the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            groups: dict[int, list[StepRequest]] = {}
            for request in batch:
                groups.setdefault(self._segment(request), []).append(request)
            self._running = True
            try:
                for group in groups.values():
                    await self._run_group(group)
            except asyncio.CancelledError:
                self._fail(batch, ShuttingDown("the server is shutting down"))
                raise
            except Exception as err:  # a bug here must not stop every session of the model
                log.exception("scheduler loop error for %s", self.model.key)
                self._fail(batch, err)
            finally:
                self._running = False

    def _take_batch(self) -> list[StepRequest]:
        """Up to max_batch_size live requests from the head of the queue; expired ones fail."""
        now = time.monotonic()
        batch: list[StepRequest] = []
        while self._queue and len(batch) < self.max_batch_size:
            request = self._queue.popleft()
            if request.future.done():  # cancelled while queued
                request.status = RequestStatus.DONE
                continue
            if request.deadline is not None and now > request.deadline:
                request.status = RequestStatus.DONE
                request.future.set_exception(
                    DeadlineExceeded(
                        "the deadline passed while the step was queued; state unchanged"
                    )
                )
                continue
            request.status = RequestStatus.RUNNING
            self._queue_time.observe(now - request.enqueued_at)
            batch.append(request)
        return batch

    def _segment(self, request: StepRequest) -> int:
        """Steps the request's next call covers."""
        return min(request.steps - request.offset, self.max_steps_per_call)

    async def _run_group(self, group: list[StepRequest]) -> None:
        """One onnxruntime call for requests whose next segment has the same number of steps."""
        steps = self._segment(group[0])
        specs = self.store.specs
        # Fresh sessions (gathered from the store), then continuing long messages (their carried
        # state), then fresh stateless sequences (initial state).
        fresh = [r for r in group if r.carry is None and r.slot is not None]
        carried = [r for r in group if r.carry is not None]
        stateless = [r for r in group if r.carry is None and r.slot is None]
        order = fresh + carried + stateless
        parts: list[list[FloatArray]] = []
        if fresh:
            slots = np.fromiter((r.slot for r in fresh), dtype=np.intp, count=len(fresh))
            parts.append(self.store.gather(slots))
        if carried:
            parts.append(
                [
                    np.concatenate([r.carry[j] for r in carried if r.carry], axis=spec.batch_axis)
                    for j, spec in enumerate(specs)
                ]
            )
        if stateless:
            parts.append(self.store.initial_batch(len(stateless)))
        if len(parts) == 1:
            states = parts[0]
        else:
            states = [
                np.concatenate([part[j] for part in parts], axis=spec.batch_axis)
                for j, spec in enumerate(specs)
            ]
        inputs = np.stack([r.inputs[r.offset : r.offset + steps] for r in order])
        assert self._worker is not None
        started = time.perf_counter()
        try:
            outputs, new_states = await self._worker.call(self.model.run, inputs, states)
        except asyncio.CancelledError:  # stop() during a call: nobody is left to deliver to
            self._fail(order, ShuttingDown("the server is shutting down"))
            raise
        except Exception as err:  # the model failed: every request of the call fails, state kept
            log.exception("onnxruntime call failed for %s", self.model.key)
            self._fail(order, err)
            return
        elapsed = time.perf_counter() - started
        self._call_seconds = 0.8 * self._call_seconds + 0.2 * elapsed
        self._compute_time.observe(elapsed)
        self._batch_size.observe(len(order))
        self._steps.inc(len(order) * steps)
        self._deliver(order, steps, states, outputs, new_states)

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
        """Commit finished requests' states, resolve their futures, requeue unfinished ones.

        Runs on the loop thread with no await, so a request's commit and its result are one
        atomic event for every other task.
        """
        specs = self.store.specs
        finished: list[int] = []
        for index, request in enumerate(order):
            if request.future.done():  # cancelled meanwhile: no commit
                request.status = RequestStatus.DONE
                continue
            request.offset += steps
            if request.offset < request.steps:
                if request.slot is not None and request.carry is None:
                    request.before = [
                        np.take(s, index, axis=p.batch_axis)
                        for p, s in zip(specs, states, strict=True)
                    ]
                request.carry = [
                    np.take(s, [index], axis=p.batch_axis)
                    for p, s in zip(specs, new_states, strict=True)
                ]
                request.pieces.append([o[index] for o in outputs])
                request.status = RequestStatus.QUEUED
                request.enqueued_at = time.monotonic()
                self._queue.append(request)
            else:
                finished.append(index)
        committing = [i for i in finished if order[i].slot is not None]
        if committing:
            slots = np.fromiter(
                (order[i].slot for i in committing), dtype=np.intp, count=len(committing)
            )
            if len(committing) == len(order):  # the common case: every row commits as is
                self.store.scatter(slots, new_states)
            else:
                keep = np.asarray(committing, dtype=np.intp)
                self.store.scatter(
                    slots,
                    [
                        np.take(s, keep, axis=p.batch_axis)
                        for p, s in zip(specs, new_states, strict=True)
                    ],
                )
        for index in finished:
            request = order[index]
            request.status = RequestStatus.DONE
            if request.slot is not None:
                request.committed = True
                request.batch_states = states
                request.batch_index = index
            rows = [o[index] for o in outputs]
            if request.pieces:
                rows = [
                    np.concatenate([*(piece[j] for piece in request.pieces), row])
                    for j, row in enumerate(rows)
                ]
                request.pieces = []
            request.carry = None
            request.future.set_result(rows)
