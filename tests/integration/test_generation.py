"""Generate over gRPC: seeds reproduce, greedy follows the model, stop strings end it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, expect_error, identity, open_session, output_array, step, tokens
from tiny_models import GRU_LM, LM_VOCABULARY, LSTM_LM, RNN_LM, run_whole_sequence

ALICE = identity("alice")
PROMPT = "a bad cafe"


async def _generate(running: Running, **fields: object) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(**fields)  # type: ignore[arg-type]
    return [reply async for reply in running.stub.Generate(request, metadata=ALICE)]


def _ids(text: str) -> list[int]:
    return [LM_VOCABULARY.index(c) for c in text]


async def test_same_seed_same_tokens(rpc: Running) -> None:
    sampling = pb.SamplingParams(temperature=1.0, top_k=8, top_p=0.95, seed=1234)
    runs = [
        await _generate(
            rpc, model=pb.ModelRef(name=GRU_LM), text=PROMPT, max_tokens=30, sampling=sampling
        )
        for _ in range(2)
    ]
    assert [r.token_id for r in runs[0]] == [r.token_id for r in runs[1]]
    assert [r.index for r in runs[0]] == list(range(30))
    assert runs[0][-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in runs[0][:-1])
    other_seed = await _generate(
        rpc,
        model=pb.ModelRef(name=GRU_LM),
        text=PROMPT,
        max_tokens=30,
        sampling=pb.SamplingParams(temperature=1.0, top_k=8, top_p=0.95, seed=4321),
    )
    assert [r.token_id for r in other_seed] != [r.token_id for r in runs[0]]


async def test_greedy_follows_the_models_argmax(rpc: Running, tiny_repository: Path) -> None:
    replies = await _generate(
        rpc,
        model=pb.ModelRef(name=LSTM_LM),
        text=PROMPT,
        max_tokens=12,
        sampling=pb.SamplingParams(temperature=0.0),
    )
    generated = [r.token_id for r in replies]
    sequence = np.array(_ids(PROMPT) + generated, dtype=np.int64)
    logits = run_whole_sequence(tiny_repository / LSTM_LM, sequence)["logits"]
    # Token i is the argmax after the prompt and the tokens before it.
    expected = logits[len(PROMPT) - 1 : -1].argmax(axis=1).tolist()
    assert generated == expected
    assert "".join(r.text for r in replies) == "".join(LM_VOCABULARY[t] for t in generated)
    assert [r.step_count for r in replies] == list(range(len(PROMPT) + 1, len(PROMPT) + 13))


async def test_stop_string_ends_generation(rpc: Running) -> None:
    free = await _generate(
        rpc,
        model=pb.ModelRef(name=GRU_LM),
        text=PROMPT,
        max_tokens=40,
        sampling=pb.SamplingParams(temperature=0.0),
    )
    text = "".join(r.text for r in free)
    stop = text[5:7]  # a two-symbol string the greedy run produces
    stopped = await _generate(
        rpc,
        model=pb.ModelRef(name=GRU_LM),
        text=PROMPT,
        max_tokens=40,
        stop=[stop, "never-produced"],
        sampling=pb.SamplingParams(temperature=0.0),
    )
    stopped_text = "".join(r.text for r in stopped)
    assert stopped_text == text[: text.index(stop) + len(stop)]  # the stop string is included
    assert stopped[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_generation_advances_the_session_for_a_dialogue(
    rpc: Running, tiny_repository: Path
) -> None:
    a = await open_session(rpc.stub, LSTM_LM)
    await step(rpc.stub, a, tokens(_ids("ab")))
    replies = await _generate(
        rpc, session_id=a, text=" cd", max_tokens=5, sampling=pb.SamplingParams(seed=7)
    )
    assert {r.session_id for r in replies} == {a}
    generated = [r.token_id for r in replies]
    after = await step(rpc.stub, a, tokens(_ids("e")))  # the client's turn again
    assert after.step_count == 2 + 3 + 5 + 1
    sequence = np.array(_ids("ab cd") + generated + _ids("e"), dtype=np.int64)
    reference = run_whole_sequence(tiny_repository / LSTM_LM, sequence)["logits"]
    np.testing.assert_allclose(output_array(after), reference[-1:], atol=1e-5, rtol=0)


async def test_close_session_after_generation(rpc: Running) -> None:
    replies = await _generate(
        rpc, model=pb.ModelRef(name=GRU_LM), text="ab", max_tokens=3, close_session=True
    )
    err = await expect_error(step(rpc.stub, replies[0].session_id, tokens([1])))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "closed" in (err.details() or "")
    kept = await _generate(rpc, model=pb.ModelRef(name=GRU_LM), text="ab", max_tokens=3)
    assert (await step(rpc.stub, kept[0].session_id, tokens([1]))).step_count == 2 + 3 + 1


async def test_generation_limits(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(max_generate_tokens=10)
    err = await expect_error(
        _generate(running, model=pb.ModelRef(name=GRU_LM), text="ab", max_tokens=11)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("max_tokens: ")
    err = await expect_error(_generate(running, model=pb.ModelRef(name=GRU_LM), text="ab"))
    assert (err.details() or "").startswith("max_tokens: ")
    err = await expect_error(
        _generate(running, model=pb.ModelRef(name=RNN_LM), text="aZ", max_tokens=2)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("text[1]: ")
    err = await expect_error(
        _generate(
            running, model=pb.ModelRef(name=GRU_LM), tokens=pb.TokenIds(ids=[1, 99]), max_tokens=2
        )
    )
    assert (err.details() or "").startswith("tokens.ids[1]: ")
