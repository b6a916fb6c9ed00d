"""Server memory with many idle sessions, against the raw bytes of their recurrent state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc
from servers import ServerProcess

_WORKERS = 64


async def _open_sessions(target: str, model: str, count: int) -> tuple[int, int]:
    """Open `count` sessions, each fed one token so its state is really written; returns
    (state bytes per session, failures)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        info = await stub.GetModel(pb.GetModelRequest(model=pb.ModelRef(name=model)))
        state_bytes = int(info.model.state_bytes)
        ref = pb.ModelRef(name=model)
        token = pb.StepInput(tokens=pb.TokenIds(ids=[1]))
        quiet = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_NONE)
        left, failures = count, 0

        async def worker() -> None:
            nonlocal left, failures
            while left > 0:
                left -= 1
                try:
                    created = await stub.CreateSession(pb.CreateSessionRequest(model=ref))
                    session_id = created.session.session_id
                    await stub.Step(
                        pb.StepRequest(session_id=session_id, input=token, output=quiet)
                    )
                except grpc.aio.AioRpcError:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(_WORKERS)))
        return state_bytes, failures


def measure_memory(server: ServerProcess, model: str, sessions: int) -> dict[str, Any]:
    """RSS before and after opening `sessions` idle sessions on a fresh, warmed-up server."""
    asyncio.run(_open_sessions(server.target, model, 100))  # warm-up: arenas, code paths
    baseline = server.rss_bytes()
    start = time.perf_counter()
    state_bytes, failures = asyncio.run(_open_sessions(server.target, model, sessions))
    elapsed = time.perf_counter() - start
    time.sleep(1.0)  # let the allocator settle before reading RSS
    rss = server.rss_bytes()
    raw = state_bytes * sessions
    return {
        "sessions": sessions,
        "failures": failures,
        "state_bytes_per_session": state_bytes,
        "raw_state_bytes": raw,
        "rss_baseline_bytes": baseline,
        "rss_bytes": rss,
        "rss_over_raw": rss / raw if raw else float("nan"),
        "growth_over_raw": (rss - baseline) / raw if raw else float("nan"),
        "bytes_per_session": (rss - baseline) / sessions,
        "open_seconds": elapsed,
    }
