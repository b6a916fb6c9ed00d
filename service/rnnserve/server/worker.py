"""ModelWorker: the one thread per model that runs its onnxruntime calls, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import FloatArray

RunResult = tuple[list[FloatArray], list[FloatArray]]
RunFunction = Callable[[npt.NDArray[np.generic], Sequence[FloatArray]], RunResult]
# (result, error, seconds inside the model call)
DoneCallback = Callable[[RunResult | None, BaseException | None, float], None]


def timed_run(
    run: RunFunction, inputs: npt.NDArray[np.generic], states: Sequence[FloatArray]
) -> tuple[RunResult | None, BaseException | None, float]:
    """Call the model once: (result, error, seconds spent in the call itself)."""
    started = time.perf_counter()
    try:
        return run(inputs, states), None, time.perf_counter() - started
    except Exception as err:
        return None, err, time.perf_counter() - started


class ModelWorker:
    """The one thread that runs a model's onnxruntime calls, off the event loop.

    A plain thread fed by a SimpleQueue; each result comes back to the event loop as one
    call_soon_threadsafe callback (no concurrent.futures.Future chained into an asyncio one).
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[
            tuple[RunFunction, npt.NDArray[np.generic], Sequence[FloatArray], DoneCallback] | None
        ] = queue.SimpleQueue()
        # daemon: a call stuck in onnxruntime must not keep the process alive at exit
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(
        self,
        run: RunFunction,
        inputs: npt.NDArray[np.generic],
        states: Sequence[FloatArray],
        done: DoneCallback,
    ) -> None:
        """Queue one call; `done(result, error)` then runs on the event loop thread."""
        self._jobs.put((run, inputs, states, done))

    def close(self) -> None:
        """Let the thread finish its current call and exit."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            run, inputs, states, done = job
            result, error, seconds = timed_run(run, inputs, states)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(done, result, error, seconds)
