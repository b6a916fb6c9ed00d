"""Streaming through the server equals one whole-sequence onnxruntime run, however it is chunked."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import (
    Running,
    features,
    identity,
    open_session,
    output_array,
    step,
    tokens,
)
from tiny_models import GRU_LM, LSTM_LM, REGRESSOR, RNN_LM, run_whole_sequence

TOLERANCE = 1e-5
UNEVEN = (1, 5, 2, 9, 1, 6)  # 24 steps


def _sequence(model: str, length: int, seed: int) -> npt.NDArray[np.generic]:
    rng = np.random.default_rng(seed)
    if model == REGRESSOR:
        return rng.normal(0, 1, (length, 4)).astype(np.float32)
    return rng.integers(0, 20, length).astype(np.int64)


def _message(model: str, chunk: npt.NDArray[np.generic]) -> pb.StepInput:
    if model == REGRESSOR:
        return features(np.asarray(chunk, dtype=np.float32))
    return tokens([int(t) for t in chunk])


def _chunks(
    sequence: npt.NDArray[np.generic], sizes: Sequence[int]
) -> list[npt.NDArray[np.generic]]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(sequence)
    return [sequence[a:b] for a, b in itertools.pairwise(bounds)]


async def _stream_outputs(
    running: Running, model: str, chunks: list[npt.NDArray[np.generic]], who: str = "alice"
) -> npt.NDArray[np.float32]:
    """Open a session on a Stream, send each chunk as one message, concatenate the outputs."""

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(
            request_id="open", open=pb.OpenSession(model=pb.ModelRef(name=model))
        )
        for index, chunk in enumerate(chunks):
            yield pb.StreamRequest(request_id=f"s{index}", step=_message(model, chunk))

    rows, total = [], 0
    async for reply in running.stub.Stream(requests(), metadata=identity(who)):
        assert not reply.HasField("error"), reply.error
        if reply.request_id == "open":
            assert reply.session.model == model and reply.session.step_count == 0
            continue
        index = int(reply.request_id[1:])
        total += len(chunks[index])
        assert reply.result.steps == len(chunks[index])
        assert reply.result.step_count == total
        rows.append(output_array(reply.result))
    return np.concatenate(rows)


@pytest.mark.parametrize("model", [RNN_LM, GRU_LM, LSTM_LM, REGRESSOR])
@pytest.mark.parametrize("sizes", [(1,) * 24, UNEVEN], ids=["one-per-message", "uneven"])
async def test_stream_equals_whole_sequence(
    rpc: Running, tiny_repository: Path, model: str, sizes: tuple[int, ...]
) -> None:
    sequence = _sequence(model, 24, seed=len(sizes))
    streamed = await _stream_outputs(rpc, model, _chunks(sequence, sizes))
    reference = run_whole_sequence(tiny_repository / model, sequence)
    output = "value" if model == REGRESSOR else "logits"
    assert streamed.shape == reference[output].shape
    np.testing.assert_allclose(streamed, reference[output], atol=TOLERANCE, rtol=0)


async def test_unary_steps_equal_whole_sequence(rpc: Running, tiny_repository: Path) -> None:
    sequence = _sequence(LSTM_LM, 24, seed=5)
    session_id = await open_session(rpc.stub, LSTM_LM)
    rows = []
    for chunk in _chunks(sequence, UNEVEN):
        rows.append(output_array(await step(rpc.stub, session_id, _message(LSTM_LM, chunk))))
    reference = run_whole_sequence(tiny_repository / LSTM_LM, sequence)["logits"]
    np.testing.assert_allclose(np.concatenate(rows), reference, atol=TOLERANCE, rtol=0)


async def test_last_step_only_and_version_choice(rpc: Running, tiny_repository: Path) -> None:
    sequence = _sequence(LSTM_LM, 10, seed=6)
    last = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST)
    for version in (1, 2):
        session_id = await open_session(rpc.stub, LSTM_LM, version=version)
        result = await step(rpc.stub, session_id, _message(LSTM_LM, sequence), output=last)
        reference = run_whole_sequence(tiny_repository / LSTM_LM, sequence, version=version)
        np.testing.assert_allclose(
            output_array(result), reference["logits"][-1:], atol=TOLERANCE, rtol=0
        )
        assert result.steps == 10 and result.step_count == 10


async def test_interleaved_sessions_are_independent(rpc: Running, tiny_repository: Path) -> None:
    first, second = _sequence(GRU_LM, 12, seed=7), _sequence(GRU_LM, 12, seed=8)
    a = await open_session(rpc.stub, GRU_LM)
    b = await open_session(rpc.stub, GRU_LM)
    rows: dict[str, list[npt.NDArray[np.float32]]] = {a: [], b: []}
    for position in range(12):  # a, b, a, b, ... one token each
        for session_id, sequence in ((a, first), (b, second)):
            result = await step(rpc.stub, session_id, tokens([int(sequence[position])]))
            rows[session_id].append(output_array(result))
    for session_id, sequence in ((a, first), (b, second)):
        reference = run_whole_sequence(tiny_repository / GRU_LM, sequence)["logits"]
        np.testing.assert_allclose(np.concatenate(rows[session_id]), reference, atol=TOLERANCE)


async def test_concurrent_streams_batch_without_mixing(
    serve: Callable[..., Awaitable[Running]], tiny_repository: Path
) -> None:
    running = await serve(max_batch_size=4)  # eight streams: batches mix sessions
    sequences = [_sequence(RNN_LM, 16, seed=100 + i) for i in range(8)]
    results = await asyncio.gather(
        *(
            _stream_outputs(running, RNN_LM, _chunks(s, (3, 1, 4, 1, 5, 2)), who=f"client-{i}")
            for i, s in enumerate(sequences)
        )
    )
    for sequence, streamed in zip(sequences, results, strict=True):
        reference = run_whole_sequence(tiny_repository / RNN_LM, sequence)["logits"]
        np.testing.assert_allclose(streamed, reference, atol=TOLERANCE, rtol=0)
