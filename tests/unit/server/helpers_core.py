"""Small helpers shared by the core's unit tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine

ME = "alice"


def tokens(seed: int, length: int, vocab: int = 20) -> npt.NDArray[np.int64]:
    """Reproducible random token ids."""
    return np.random.default_rng(seed).integers(0, vocab, length).astype(np.int64)


def frames(seed: int, length: int, width: int) -> npt.NDArray[np.float32]:
    """Reproducible random feature frames."""
    return np.random.default_rng(seed).normal(size=(length, width)).astype(np.float32)


async def feed(
    engine: InferenceEngine, session_id: str, data: npt.NDArray[np.generic] | str
) -> npt.NDArray[np.float32]:
    """Step a session with one message and return its first output's raw rows."""
    outcome = await engine.step(session_id, ME, data, OutputOptions())  # type: ignore[arg-type]
    tensor = outcome.outputs[0].tensor
    assert tensor is not None
    return tensor


async def twin_session(engine: InferenceEngine, model: str, prefix: npt.NDArray[np.generic]) -> str:
    """A fresh session fed `prefix`: what an untouched session looks like."""
    view = await engine.create_session(model, 0, ME)
    await feed(engine, view.session_id, prefix)
    return view.session_id


class Gate:
    """Holds a model's onnxruntime calls until opened, to make steps queue up or stay running."""

    def __init__(
        self, engine: InferenceEngine, model: str, version: int = 0, *, let_through: int = 0
    ) -> None:
        import threading

        self._let_through = let_through
        served = engine.registry.resolve(model, version)
        self.model = served.model
        # gated calls must run in the worker thread: an inline (small) call would block the loop
        served.scheduler.inline_max_tokens = 0
        self._run = self.model.run
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.model.run = self._gated  # type: ignore[method-assign]

    def _gated(self, *args: object) -> object:
        if self._let_through > 0:  # the first calls pass unhindered
            self._let_through -= 1
            return self._run(*args)  # type: ignore[arg-type]
        self.entered.set()
        self.opened.wait(10)
        return self._run(*args)  # type: ignore[arg-type]

    async def wait_entered(self) -> None:
        """Until a call is inside the model (running, not queued)."""
        import asyncio

        assert await asyncio.to_thread(self.entered.wait, 10)

    def open(self) -> None:
        self.opened.set()
