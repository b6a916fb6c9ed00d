"""What the load generator sends: the model's input shape (asked of the server), random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
from rnnserve.client.load.config import LoadConfig
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

_POOL_SIZE = 64  # distinct pre-built inputs per run, cycled: building one per message costs CPU


@dataclass(frozen=True)
class ModelShape:
    """The little the load generator needs to know about the model under test."""

    input_kind: str  # "tokens" or "features"
    vocab_size: int
    feature_width: int
    max_steps_per_message: int
    described: bool  # False when the server could not describe it and the config's guess is used


async def describe_model(stub: pb_grpc.InferenceServiceStub, config: LoadConfig) -> ModelShape:
    """Ask the server for the model's input; fall back to the config when it cannot say."""
    request = pb.GetModelRequest(model=pb.ModelRef(name=config.model, version=config.version))
    try:
        reply = await stub.GetModel(
            request, timeout=config.timeout_s, metadata=config.call_metadata
        )
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            raise
        return ModelShape("tokens", config.vocab_size, config.feature_width, 4096, False)
    model = reply.model
    return ModelShape(
        input_kind=model.input_kind or "tokens",
        vocab_size=len(model.vocabulary) or config.vocab_size,
        feature_width=int(model.feature_width) or config.feature_width,
        max_steps_per_message=int(model.max_steps_per_message) or 4096,
        described=True,
    )


class InputFactory:
    """Random but reproducible inputs of a given number of steps."""

    def __init__(self, shape: ModelShape, seed: int) -> None:
        self.shape = shape
        self._rng = np.random.default_rng(seed)
        self._pools: dict[int, list[pb.StepInput]] = {}

    def tokens(self, steps: int) -> np.ndarray:
        """`steps` random token ids."""
        return self._rng.integers(0, self.shape.vocab_size, size=steps, dtype=np.int64)

    def build(self, steps: int) -> pb.StepInput:
        """A fresh StepInput of `steps` steps."""
        if self.shape.input_kind == "features":
            frames = self._rng.standard_normal((steps, self.shape.feature_width), dtype=np.float32)
            return pb.StepInput(
                features=pb.Tensor(
                    dtype=pb.DATA_TYPE_FLOAT32,
                    shape=[steps, self.shape.feature_width],
                    raw_data=frames.astype("<f4").tobytes(),
                )
            )
        return pb.StepInput(tokens=pb.TokenIds(ids=self.tokens(steps).tolist()))

    def prefix(self, ids: np.ndarray) -> pb.StepInput:
        """A StepInput holding exactly these token ids (or as many random frames)."""
        if self.shape.input_kind == "features":
            return self.build(int(ids.size))
        return pb.StepInput(tokens=pb.TokenIds(ids=ids.tolist()))

    def pool(self, steps: int) -> list[pb.StepInput]:
        """A cycled pool of pre-built inputs of `steps` steps."""
        if steps not in self._pools:
            self._pools[steps] = [self.build(steps) for _ in range(_POOL_SIZE)]
        return self._pools[steps]
