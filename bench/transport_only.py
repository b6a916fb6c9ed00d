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
from collections.abc import AsyncIterator

import grpc
import numpy as np
from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import (
    FinishReason,
    GeneratedToken,
    GenerationRequest,
    InputData,
    ModelDescription,
    ModelStatistics,
    OutputOptions,
    OutputResult,
    SessionView,
    StepOutcome,
)
from rnnserve.server.errors import RnnServeError
from rnnserve.server.manifest import (
    Architecture,
    ExportInfo,
    ModelManifest,
    OutputSpec,
    StateSpec,
    TokenInput,
    VersionInfo,
)
from rnnserve.server.transport.servicer import InferenceServicer
from rnnserve.v1 import rnnserve_pb2_grpc


class NoOpEngine(InferenceCore):
    """An InferenceCore that answers every call at once with a reply of the model's size.

    Sessions are ids only and hold no state; steps return zero logits. Only the cost of
    rnnserve's transport remains.
    """

    def __init__(self, logits: int) -> None:
        self._logits = logits
        self._ids = itertools.count()
        self._manifest = ModelManifest(
            name="char-lstm",
            task="language-model",
            cell="lstm",
            streamable=True,
            architecture=Architecture(layers=1, hidden_size=1),
            input=TokenInput(name="tokens", vocabulary=[chr(32 + i) for i in range(logits)]),
            outputs=[OutputSpec(name="logits", meaning="logits", shape=[logits])],
            states=[StateSpec(input_name="h0", output_name="hn", shape=[1, 1])],
            versions=[
                VersionInfo(
                    version=1, sha256="0" * 64, export=ExportInfo(exporter="none", opset=17)
                )
            ],
        )

    @property
    def ready(self) -> bool:
        return True

    def list_models(self) -> list[ModelDescription]:
        return [self.get_model("char-lstm")]

    def get_model(self, name: str, version: int = 0) -> ModelDescription:
        return ModelDescription(self._manifest, 1, [1], 4, 1024)

    def _view(self, session_id: str) -> SessionView:
        now = time.time()
        return SessionView(session_id, "char-lstm", 1, 0, now, now + 600, 4)

    def _outcome(self, steps: int) -> StepOutcome:
        output = OutputResult(
            "logits",
            "logits",
            tensor=np.zeros((steps, self._logits), np.float32),
            argmax=np.zeros(steps, np.int64),
            labels=["a"] * steps,
        )
        return StepOutcome([output], steps, steps)

    async def create_session(self, name: str, version: int, identity: str) -> SessionView:
        return self._view(f"s{next(self._ids)}")

    def model_statistics(self, name: str, version: int = 0) -> list[ModelStatistics]:
        return [ModelStatistics("char-lstm", 1)]

    async def open_sequence(
        self, name: str, version: int, identity: str, sequence: str, *, start: bool
    ) -> SessionView:
        return self._view(f"q{sequence}")

    async def get_session(self, session_id: str, identity: str) -> SessionView:
        return self._view(session_id)

    async def reset_session(self, session_id: str, identity: str) -> SessionView:
        return self._view(session_id)

    async def close_session(self, session_id: str, identity: str) -> SessionView:
        return self._view(session_id)

    async def export_state(self, session_id: str, identity: str) -> tuple[bytes, SessionView]:
        return b"", self._view(session_id)

    async def import_state(self, snapshot: bytes, identity: str) -> SessionView:
        return self._view(f"s{next(self._ids)}")

    async def step(
        self,
        session_id: str,
        identity: str,
        data: InputData,
        options: OutputOptions,
        *,
        input_field: str = "",
        expected_step_count: int | None = None,
        deadline: float | None = None,
    ) -> StepOutcome:
        return self._outcome(len(data))

    async def step_many(
        self,
        session_id: str,
        identity: str,
        messages: list[tuple[InputData, OutputOptions]],
        *,
        input_field: str = "",
        deadline: float | None = None,
    ) -> list[StepOutcome | RnnServeError]:
        return [self._outcome(len(data)) for data, _ in messages]

    async def predict(
        self,
        name: str,
        version: int,
        sequences: list[InputData],
        options: OutputOptions,
        *,
        input_field: str = "sequences",
    ) -> list[StepOutcome]:
        return [self._outcome(len(data)) for data in sequences]

    async def generate(
        self, request: GenerationRequest, identity: str
    ) -> AsyncIterator[GeneratedToken]:
        session_id = request.session_id or f"s{next(self._ids)}"
        count = request.max_tokens or 1
        for index in range(count):
            finish = FinishReason.LENGTH if index == count - 1 else None
            yield GeneratedToken(session_id, 0, " ", index, index + 1, finish)


async def _serve(port: int, logits: int) -> None:
    server = grpc.aio.server()
    servicer = InferenceServicer(NoOpEngine(logits))
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
