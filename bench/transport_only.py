"""rnnserve's own gRPC transport over a no-op engine: what the transport costs without the core.

Serves rnnserve.v1 with the real `InferenceServicer` (codecs, Stream conversation, error
wrapper, metrics) over an engine that answers every call at once with a reply of the model's
size. Between the echo floor and rnnserve, it splits the server's cost per message into
transport and core. Run: `python bench/transport_only.py --port N --logits 81`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import grpc
import numpy as np
from rnnserve.server.transport.servicer import InferenceServicer
from rnnserve.server.types import OutputResult, SessionView, StepOutcome
from rnnserve.v1 import rnnserve_pb2_grpc


class NoOpEngine:
    """The part of InferenceEngine's interface that sessions and steps use, answering at once."""

    def __init__(self, logits: int) -> None:
        self._logits = logits
        self._ids = itertools.count()

    def _view(self, session_id: str) -> SessionView:
        now = time.time()
        return SessionView(session_id, "char-lstm", 1, 0, now, now + 600, 4096)

    async def create_session(self, name: str, version: int, identity: str) -> SessionView:
        return self._view(f"s{next(self._ids)}")

    async def close_session(self, session_id: str, identity: str) -> SessionView:
        return self._view(session_id)

    async def step(
        self, session_id: str, identity: str, data: Any, options: Any, **_: Any
    ) -> StepOutcome:
        steps = len(data)
        output = OutputResult(
            "logits",
            "logits",
            tensor=np.zeros((steps, self._logits), np.float32),
            argmax=np.zeros(steps, np.int64),
            labels=["a"] * steps,
        )
        return StepOutcome([output], steps, steps)


async def _serve(port: int, logits: int) -> None:
    server = grpc.aio.server()
    servicer = InferenceServicer(NoOpEngine(logits))  # type: ignore[arg-type]
    rnnserve_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--logits", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.logits))
