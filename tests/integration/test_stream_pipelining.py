"""A client that sends Stream messages ahead of their replies: answered in order, one reply each,
outputs identical to one-by-one steps, and the waiting messages run as one model call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, hold_model, identity, open_session, output_array, step, tokens
from tiny_models import GRU_LM

CHUNKS = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [99], [0], [1, 1, 2]]  # [99]: outside the vocabulary


async def test_pipelined_messages_are_answered_in_order_as_one_by_one(rpc: Running) -> None:
    twin = await open_session(rpc.stub, GRU_LM)
    before = rpc.server.engine.model_statistics(GRU_LM)[0].executions
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM)))
        for index, chunk in enumerate(CHUNKS):
            yield pb.StreamRequest(step=tokens(chunk), request_id=f"m{index}")
        sent.set()
        await asyncio.sleep(30)  # keep the stream open until the test has its replies

    with hold_model(rpc, GRU_LM) as hold:
        call = rpc.stub.Stream(requests(), metadata=identity("alice"))
        replies = []
        opened = await call.read()
        assert opened.WhichOneof("kind") == "session"
        await asyncio.to_thread(hold.entered.wait, 5)  # the first step is inside the model...
        await asyncio.wait_for(sent.wait(), 5)
        await asyncio.sleep(0.2)  # ...while the others arrive and wait
        hold.release.set()
        for _ in CHUNKS:
            replies.append(await call.read())
    call.cancel()
    assert [r.request_id for r in replies] == [f"m{i}" for i in range(len(CHUNKS))]
    executions = rpc.server.engine.model_statistics(GRU_LM)[0].executions - before
    assert executions == 2  # the first message, then the seven that waited, together
    step_count = 0
    for chunk, reply in zip(CHUNKS, replies, strict=True):
        if chunk == [99]:
            assert reply.error.field == "step.tokens.ids[0]"
            continue
        expected = await step(rpc.stub, twin, tokens(chunk))
        step_count += len(chunk)
        assert reply.result.step_count == expected.step_count == step_count
        np.testing.assert_allclose(output_array(reply.result), output_array(expected), rtol=1e-6)


async def test_a_long_pipeline_is_joined_only_up_to_one_calls_worth_of_steps(rpc: Running) -> None:
    """Waiting messages join while their steps fit one scheduler call (256): 100 messages of 10
    steps become at least four calls, every reply in order and identical to one-by-one."""
    twin = await open_session(rpc.stub, GRU_LM)
    chunks = [[(7 * i + j) % 20 for j in range(10)] for i in range(100)]
    before = rpc.server.engine.model_statistics(GRU_LM)[0].executions

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM)))
        for chunk in chunks:
            yield pb.StreamRequest(step=tokens(chunk))

    replies = [r async for r in rpc.stub.Stream(requests(), metadata=identity("alice"))][1:]
    assert len(replies) == len(chunks)
    assert rpc.server.engine.model_statistics(GRU_LM)[0].executions - before >= 4
    assert [r.result.step_count for r in replies] == [10 * (i + 1) for i in range(100)]
    for chunk in chunks:
        expected = await step(rpc.stub, twin, tokens(chunk))
    np.testing.assert_allclose(output_array(replies[-1].result), output_array(expected), rtol=1e-6)
