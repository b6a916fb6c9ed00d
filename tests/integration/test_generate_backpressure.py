"""A Generate whose client stops reading: ended after the write timeout, its session freed,
shutdown not held up; what a cancelled Generate committed, and how a client reconciles it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from server_helpers import Running, identity, open_session, output_array, step, tokens
from tiny_models import GRU_LM, LM_VOCABULARY, run_whole_sequence

ALICE = identity("alice")
GREEDY = pb.SamplingParams(temperature=0.0)
# More tokens than a small receive window holds, fewer than the server's cap (4096).
MANY = 4000
# A client whose HTTP/2 receive window stays ~1 KiB (no BDP growth): about 20 replies fill it.
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024))
# Generous bound for waiting on the server (never a performance threshold).
PATIENCE_S = 30.0


def _ids(text: str) -> list[int]:
    return [LM_VOCABULARY.index(c) for c in text]


async def _poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` is true (up to PATIENCE_S)."""
    deadline = time.monotonic() + PATIENCE_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {PATIENCE_S:g} s")
        await asyncio.sleep(0.05)


async def _busy(stub: rnnserve_pb2_grpc.InferenceServiceStub, session_id: str) -> bool:
    """True while a call (the Generate) holds the session: ExportState answers ABORTED."""
    try:
        await stub.ExportState(pb.ExportStateRequest(session_id=session_id), metadata=ALICE)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.ABORTED:
            return True
        raise
    return False


async def _step_count(stub: rnnserve_pb2_grpc.InferenceServiceStub, session_id: str) -> int:
    reply = await stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=ALICE)
    return int(reply.session.step_count)


async def _read_rest(
    call: grpc.aio.UnaryStreamCall,
) -> tuple[list[pb.GenerateResponse], grpc.aio.AioRpcError | None]:
    """Every reply still to come, and the error that ended the call (None for OK)."""
    replies: list[pb.GenerateResponse] = []
    try:
        while (reply := await call.read()) is not grpc.aio.EOF:
            replies.append(reply)
    except grpc.aio.AioRpcError as err:
        return replies, err
    return replies, None


async def test_a_client_that_stops_reading_is_ended_and_still_gets_every_committed_token(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(generate_write_timeout_s=0.3)
    session = await open_session(running.stub, GRU_LM)
    await step(running.stub, session, tokens(_ids("ab")))
    async with grpc.aio.insecure_channel(running.address, options=SMALL_WINDOW) as channel:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(session_id=session, max_tokens=MANY, sampling=GREEDY)
        call = stub.Generate(request, metadata=ALICE)
        # The client reads nothing; the server gives up on it and frees the session.
        await _poll(lambda: _busy(running.stub, session), "the Generate holding its session")
        await _poll(
            lambda: _not(_busy(running.stub, session)), "the session freed by the write timeout"
        )
        committed = await _step_count(running.stub, session)
        # Reading now: every token the session took, then the status that ended the call.
        replies, error = await _read_rest(call)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "read nothing for 0.3 s" in (error.details() or "")
    assert 0 < len(replies) < MANY  # stopped by the client's silence, not by max_tokens
    assert [r.step_count for r in replies] == list(range(3, 3 + len(replies)))
    assert replies[-1].step_count == committed  # nothing committed that the client cannot read
    assert f"session step count {committed}" in (error.details() or "")


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def test_a_non_reading_generate_does_not_keep_its_session_past_its_ttl(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(generate_write_timeout_s=0.5, session_ttl_s=1.0)
    async with grpc.aio.insecure_channel(running.address, options=SMALL_WINDOW) as channel:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(
            model=pb.ModelRef(name=GRU_LM), text="ab", max_tokens=MANY, sampling=GREEDY
        )
        call = stub.Generate(request, metadata=ALICE)
        session = (await call.read()).session_id  # learn the id, then read nothing more

        async def expired() -> bool:
            try:
                await _step_count(running.stub, session)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                assert "expired" in (err.details() or "")
                return True
            return False

        await _poll(expired, "the unread Generate's session expiring")
        call.cancel()


async def test_shutdown_is_not_held_up_by_a_generate_whose_client_stopped_reading(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    grace_s = 30.0
    running = await serve(shutdown_grace_s=grace_s)  # the write timeout (30 s) never fires here
    session = await open_session(running.stub, GRU_LM)
    await step(running.stub, session, tokens(_ids("ab")))
    async with grpc.aio.insecure_channel(running.address, options=SMALL_WINDOW) as channel:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(session_id=session, max_tokens=MANY, sampling=GREEDY)
        call = stub.Generate(request, metadata=ALICE)  # never read before the stop
        await _poll(lambda: _stalled(running.stub, session), "the Generate stalled by its client")
        started = time.monotonic()
        # Well inside the grace period: the stalled Generate holds no engine work to drain.
        await asyncio.wait_for(running.server.stop(grace_s), timeout=grace_s / 3)
        elapsed = time.monotonic() - started
        print(f"stop with grace {grace_s:g} s and an unread Generate: {elapsed:.2f} s")
        replies, error = await asyncio.wait_for(_read_rest(call), timeout=PATIENCE_S)
    assert error is not None and error.code() != grpc.StatusCode.OK  # ended by the stop
    assert len(replies) < MANY  # the generation was held by its client, not finished


async def _stalled(stub: rnnserve_pb2_grpc.InferenceServiceStub, session_id: str) -> bool:
    """True once the session is held by a call and its step count no longer moves."""
    before = await _step_count(stub, session_id)
    await asyncio.sleep(0.2)
    return (
        before > 2
        and await _step_count(stub, session_id) == before
        and await _busy(stub, session_id)
    )


async def test_a_cancelled_generate_committed_a_prefix_of_its_tokens_the_step_counts_tell(
    rpc: Running, tiny_repository: Path
) -> None:
    request = pb.GenerateRequest(
        model=pb.ModelRef(name=GRU_LM), text="ab", max_tokens=300, sampling=GREEDY
    )
    reference = [r async for r in rpc.stub.Generate(request, metadata=ALICE)]
    call = rpc.stub.Generate(request, metadata=ALICE)
    received = [await call.read() for _ in range(5)]
    call.cancel()
    session = received[0].session_id
    committed = await _step_count(rpc.stub, session)
    # Every reply says the session's step count after its token: prompt (2) + tokens so far.
    assert [r.step_count for r in received] == [3, 4, 5, 6, 7]
    assert [r.token_id for r in received] == [r.token_id for r in reference[:5]]
    # The session took what the server produced: the replies received, and any still in flight
    # to the client when it cancelled. Their count is the difference of the step counts.
    assert received[-1].step_count <= committed <= 2 + 300
    print(f"cancelled after 5 replies: {committed - received[-1].step_count} more were committed")
    # ... and exactly those: the state is the prompt and the first (committed - 2) tokens.
    produced = [r.token_id for r in reference[: committed - 2]]
    after = await step(rpc.stub, session, tokens(_ids("c")))
    assert after.step_count == committed + 1
    sequence = np.array(_ids("ab") + produced + _ids("c"), dtype=np.int64)
    logits = run_whole_sequence(tiny_repository / GRU_LM, sequence)["logits"]
    np.testing.assert_allclose(output_array(after), logits[-1:], atol=1e-5, rtol=0)
