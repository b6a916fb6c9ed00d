"""Helpers for integration tests: in-process servers on 127.0.0.1:0 and short gRPC calls."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from rnnserve.server.app import RnnServeServer, build_server
from rnnserve.server.settings import Settings
from rnnserve.server.transport.codecs import decode_tensor
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc


@dataclass
class Running:
    """A started server, a channel to it and its stub."""

    server: RnnServeServer
    port: int
    channel: grpc.aio.Channel
    stub: rnnserve_pb2_grpc.InferenceServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def make_settings(repository: Path, **overrides: Any) -> Settings:
    """Test settings: loopback, free port, no metrics endpoint unless asked."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "model_repository": repository,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[Running]:
    """Build, start, connect; stop gracefully at exit (if the test has not already)."""
    server, port = build_server(settings)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, port, channel, rnnserve_pb2_grpc.InferenceServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(settings.shutdown_grace_s)


def identity(name: str) -> tuple[tuple[str, str], ...]:
    """Call metadata for client identity `name`."""
    return (("x-client-id", name),)


def tokens(ids: Sequence[int]) -> pb.StepInput:
    return pb.StepInput(tokens=pb.TokenIds(ids=list(ids)))


def features(frames: npt.NDArray[np.float32]) -> pb.StepInput:
    tensor = pb.Tensor(
        dtype=pb.DATA_TYPE_FLOAT32,
        shape=list(frames.shape),
        raw_data=frames.astype("<f4").tobytes(),
    )
    return pb.StepInput(features=tensor)


def output_array(result: pb.StepResult, index: int = 0) -> npt.NDArray[np.float32]:
    """The raw tensor of output `index` of a step result, as numpy."""
    return np.asarray(decode_tensor(result.outputs[index].tensor), dtype=np.float32)


async def open_session(
    stub: rnnserve_pb2_grpc.InferenceServiceStub, model: str, who: str = "alice", version: int = 0
) -> str:
    reply = await stub.CreateSession(
        pb.CreateSessionRequest(model=pb.ModelRef(name=model, version=version)),
        metadata=identity(who),
    )
    return str(reply.session.session_id)


async def step(
    stub: rnnserve_pb2_grpc.InferenceServiceStub,
    session_id: str,
    data: pb.StepInput,
    who: str = "alice",
    **fields: Any,
) -> pb.StepResult:
    reply = await stub.Step(
        pb.StepRequest(session_id=session_id, input=data, **fields), metadata=identity(who)
    )
    return reply.result


async def expect_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await a call that must fail; return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def assert_same_next_step(
    stub: rnnserve_pb2_grpc.InferenceServiceStub,
    session_id: str,
    twin_id: str,
    data: pb.StepInput,
    who: str = "alice",
) -> None:
    """The session's next step equals its untouched twin's: state and step count unchanged."""
    mine = await step(stub, session_id, data, who)
    theirs = await step(stub, twin_id, data, who)
    assert mine.step_count == theirs.step_count
    np.testing.assert_array_equal(output_array(mine), output_array(theirs))


@dataclass
class Hold:
    """Signals of a held model: `entered` is set once an onnxruntime call is waiting to run."""

    entered: threading.Event
    release: threading.Event


@contextmanager
def hold_model(running: Running, model: str, version: int = 0) -> Iterator[Hold]:
    """Make `model`'s next onnxruntime calls wait until `release` is set (or the block ends).

    White-box on purpose: it wraps the loaded OnnxModel's `run` so a test can cancel a step, or
    let a deadline pass, while the step is certainly in flight.
    """
    served = running.server.engine.registry.resolve(model, version)
    hold = Hold(threading.Event(), threading.Event())
    real_run = served.model.run

    def held_run(*args: Any, **kwargs: Any) -> Any:
        hold.entered.set()
        hold.release.wait(timeout=10)
        return real_run(*args, **kwargs)

    served.model.run = held_run  # type: ignore[method-assign]
    # held calls must run in the worker thread: an inline (small) call would block the loop
    inline, served.scheduler.inline_max_tokens = served.scheduler.inline_max_tokens, 0
    try:
        yield hold
    finally:
        hold.release.set()
        served.model.run = real_run  # type: ignore[method-assign]
        served.scheduler.inline_max_tokens = inline
