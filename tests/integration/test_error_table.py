"""Every row of the error table over gRPC: the code, the field named in the message, and the
session's state unchanged afterwards (its next step equals an untouched twin's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import (
    Running,
    assert_same_next_step,
    expect_error,
    features,
    hold_model,
    identity,
    open_session,
    step,
    tokens,
)
from tiny_models import GRU_LM, LSTM_LM, REGRESSOR, RNN_LM, TAGGER

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PREFIX = {
    GRU_LM: tokens([1, 2, 3]),
    LSTM_LM: tokens([9, 8, 7, 6]),
    RNN_LM: tokens([4, 5]),
    REGRESSOR: features(np.ones((2, 4), np.float32)),
}
NEXT = {
    GRU_LM: tokens([7]),
    LSTM_LM: tokens([5]),
    RNN_LM: tokens([8]),
    REGRESSOR: features(np.full((1, 4), 0.5, np.float32)),
}


def assert_status(err: grpc.aio.AioRpcError, code: grpc.StatusCode, field: str | None) -> None:
    """The code, and the message leads with the request field at fault."""
    assert err.code() == code, err.details()
    if field is not None:
        assert (err.details() or "").startswith(f"{field}: "), err.details()


async def _twins(running: Running, model: str) -> tuple[str, str]:
    """Two sessions fed the same prefix."""
    a, b = await open_session(running.stub, model), await open_session(running.stub, model)
    for session_id in (a, b):
        await step(running.stub, session_id, PREFIX[model])
    return a, b


def _raw(dtype: int, shape: list[int], data: bytes) -> pb.StepInput:
    return pb.StepInput(features=pb.Tensor(dtype=dtype, shape=shape, raw_data=data))


BAD_INPUTS = [
    # (model, bad input, field, message fragment)
    (GRU_LM, tokens([1, 20]), "input.tokens.ids[1]", "outside the vocabulary [0, 20)"),
    (GRU_LM, tokens([-1]), "input.tokens.ids[0]", "outside the vocabulary"),
    (RNN_LM, pb.StepInput(text="abZ"), "input.text[2]", "not in the vocabulary"),
    (GRU_LM, tokens([]), "input.tokens.ids", "at least one step"),
    (GRU_LM, pb.StepInput(text=""), "input.text", "empty"),
    (GRU_LM, pb.StepInput(), "input", "one of tokens, features or text"),
    (GRU_LM, features(np.ones((2, 4), np.float32)), "input.features", "takes token ids"),
    (REGRESSOR, tokens([1, 2]), "input.tokens", "feature frames of width 4"),
    (
        REGRESSOR,
        _raw(pb.DATA_TYPE_FLOAT64, [1, 4], np.ones((1, 4)).tobytes()),
        "input.features.dtype",
        "DATA_TYPE_FLOAT64",
    ),
    (
        REGRESSOR,
        features(np.ones((3, 5), np.float32)),
        "input.features.shape",
        "expected [*, 4], got [3, 5]",
    ),
    (
        REGRESSOR,
        _raw(pb.DATA_TYPE_FLOAT32, [2, 4], b"\0" * 28),
        "input.features.raw_data",
        "expected 32 bytes",
    ),
    (
        REGRESSOR,
        _raw(pb.DATA_TYPE_FLOAT32, [4], b"\0" * 16),
        "input.features.shape",
        "[steps, width]",
    ),
    (REGRESSOR, features(np.zeros((0, 4), np.float32)), "input.features", "at least one step"),
    (
        REGRESSOR,
        features(np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]], np.float32)),
        "input.features",
        "NaN",
    ),
    (REGRESSOR, features(np.array([[0, np.inf, 0, 0]], np.float32)), "input.features", "inf"),
]


@pytest.mark.parametrize(
    ("model", "bad", "field", "fragment"),
    BAD_INPUTS,
    ids=[c[2] + ":" + c[3][:12] for c in BAD_INPUTS],
)
async def test_invalid_input_names_the_field_and_keeps_state(
    rpc: Running, model: str, bad: pb.StepInput, field: str, fragment: str
) -> None:
    a, twin = await _twins(rpc, model)
    err = await expect_error(step(rpc.stub, a, bad))
    assert_status(err, INVALID, field)
    assert fragment in (err.details() or "")
    assert await _step_count(rpc, a) == await _step_count(rpc, twin)
    await assert_same_next_step(rpc.stub, a, twin, NEXT[model])


async def test_invalid_argument_carries_bad_request_details(rpc: Running) -> None:
    a = await open_session(rpc.stub, GRU_LM)
    err = await expect_error(step(rpc.stub, a, tokens([3, 99])))
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "input.tokens.ids[1]"


async def test_too_many_steps_in_one_message(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(max_steps_per_message=8)
    a, twin = await _twins(running, GRU_LM)
    err = await expect_error(step(running.stub, a, tokens([1] * 9)))
    assert_status(err, INVALID, "input.tokens.ids")
    assert "9 steps" in (err.details() or "") and "8" in (err.details() or "")
    err = await expect_error(step(running.stub, a, pb.StepInput(text="a" * 9)))
    assert_status(err, INVALID, "input.text")
    await assert_same_next_step(running.stub, a, twin, tokens([1] * 8))


async def test_unknown_model_and_version(rpc: Running) -> None:
    err = await expect_error(open_session(rpc.stub, "no-such-model"))
    assert_status(err, grpc.StatusCode.NOT_FOUND, "model.name")
    err = await expect_error(open_session(rpc.stub, LSTM_LM, version=9))
    assert_status(err, grpc.StatusCode.NOT_FOUND, "model.version")
    assert "served: [1, 2]" in (err.details() or "")
    err = await expect_error(
        rpc.stub.GetModel(pb.GetModelRequest(model=pb.ModelRef(name="no-such-model")))
    )
    assert_status(err, grpc.StatusCode.NOT_FOUND, "model.name")
    err = await expect_error(
        rpc.stub.Predict(
            pb.PredictRequest(model=pb.ModelRef(name=TAGGER, version=3), sequences=[tokens([1])])
        )
    )
    assert_status(err, grpc.StatusCode.NOT_FOUND, "model.version")


async def test_unknown_and_closed_session(rpc: Running) -> None:
    err = await expect_error(step(rpc.stub, "not-a-session", tokens([1])))
    assert_status(err, grpc.StatusCode.NOT_FOUND, "session_id")
    assert (err.details() or "").endswith("not found")
    a = await open_session(rpc.stub, GRU_LM)
    closed = await rpc.stub.CloseSession(
        pb.CloseSessionRequest(session_id=a), metadata=identity("alice")
    )
    assert closed.session.session_id == a
    for call in (
        step(rpc.stub, a, tokens([1])),
        rpc.stub.GetSession(pb.GetSessionRequest(session_id=a), metadata=identity("alice")),
        rpc.stub.CloseSession(pb.CloseSessionRequest(session_id=a), metadata=identity("alice")),
    ):
        err = await expect_error(call)
        assert_status(err, grpc.StatusCode.NOT_FOUND, "session_id")
        assert "was closed" in (err.details() or "")


async def test_empty_session_id_is_invalid(rpc: Running) -> None:
    err = await expect_error(step(rpc.stub, "", tokens([1])))
    assert_status(err, INVALID, "session_id")


async def test_bidirectional_model_cannot_stream_or_step(rpc: Running) -> None:
    err = await expect_error(open_session(rpc.stub, TAGGER))
    assert_status(err, grpc.StatusCode.FAILED_PRECONDITION, "model")
    assert "Predict" in (err.details() or "")

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=TAGGER)))

    replies = [r async for r in rpc.stub.Stream(requests())]
    assert replies[0].error.code_name == "FAILED_PRECONDITION"
    assert replies[0].error.field == "open.model"
    err = await expect_error(
        _drain(
            rpc.stub.Generate(
                pb.GenerateRequest(model=pb.ModelRef(name=TAGGER), text="ab", max_tokens=2)
            )
        )
    )
    assert_status(err, grpc.StatusCode.FAILED_PRECONDITION, "model")
    # Predict is the way to use it.
    reply = await rpc.stub.Predict(
        pb.PredictRequest(model=pb.ModelRef(name=TAGGER), sequences=[tokens([1, 2, 3])])
    )
    assert reply.results[0].steps == 3


async def test_generation_needs_a_language_model(rpc: Running) -> None:
    request = pb.GenerateRequest(model=pb.ModelRef(name=REGRESSOR), text="ab", max_tokens=2)
    err = await expect_error(_drain(rpc.stub.Generate(request)))
    assert_status(err, grpc.StatusCode.FAILED_PRECONDITION, "model")
    assert "not a language model" in (err.details() or "")


async def test_capacity(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(max_sessions=2)
    a, twin = await _twins(running, GRU_LM)
    err = await expect_error(open_session(running.stub, GRU_LM))
    assert_status(err, grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert "maximum of 2 sessions" in (err.details() or "")
    await assert_same_next_step(running.stub, a, twin, NEXT[GRU_LM])
    await running.stub.CloseSession(
        pb.CloseSessionRequest(session_id=twin), metadata=identity("alice")
    )
    assert await open_session(running.stub, GRU_LM)  # room again


async def test_bad_snapshots_are_refused(rpc: Running) -> None:
    a, twin = await _twins(rpc, LSTM_LM)
    exported = await rpc.stub.ExportState(
        pb.ExportStateRequest(session_id=a), metadata=identity("alice")
    )
    corrupted = bytearray(exported.snapshot)
    corrupted[len(corrupted) // 2] ^= 0xFF
    for bad in (bytes(corrupted), exported.snapshot[:-5], b"not a snapshot at all", b""):
        err = await expect_error(
            rpc.stub.ImportState(pb.ImportStateRequest(snapshot=bad), metadata=identity("alice"))
        )
        assert_status(err, INVALID, "snapshot")
    await assert_same_next_step(rpc.stub, a, twin, tokens([5]))


async def test_other_identity_finds_no_session(rpc: Running) -> None:
    a, twin = await _twins(rpc, GRU_LM)
    for call in (
        step(rpc.stub, a, tokens([1]), who="mallory"),
        rpc.stub.GetSession(pb.GetSessionRequest(session_id=a), metadata=identity("mallory")),
        rpc.stub.ExportState(pb.ExportStateRequest(session_id=a), metadata=identity("mallory")),
        rpc.stub.ResetSession(pb.ResetSessionRequest(session_id=a), metadata=identity("mallory")),
        rpc.stub.CloseSession(pb.CloseSessionRequest(session_id=a), metadata=identity("mallory")),
        rpc.stub.Step(pb.StepRequest(session_id=a, input=tokens([1]))),  # no x-client-id
    ):
        err = await expect_error(call)
        assert_status(err, grpc.StatusCode.NOT_FOUND, "session_id")  # as if it did not exist
    await assert_same_next_step(rpc.stub, a, twin, NEXT[GRU_LM])


async def test_out_of_order_step_is_aborted(rpc: Running) -> None:
    a, twin = await _twins(rpc, GRU_LM)
    err = await expect_error(step(rpc.stub, a, tokens([1]), expected_step_count=5))
    assert_status(err, grpc.StatusCode.ABORTED, "expected_step_count")
    assert "out of order" in (err.details() or "")
    result = await step(rpc.stub, a, NEXT[GRU_LM], expected_step_count=3)
    twin_result = await step(rpc.stub, twin, NEXT[GRU_LM])
    assert result.step_count == twin_result.step_count == 4
    assert result.outputs[0].tensor.raw_data == twin_result.outputs[0].tensor.raw_data


async def test_concurrent_step_is_aborted(rpc: Running) -> None:
    a = await open_session(rpc.stub, LSTM_LM)
    generation = rpc.stub.Generate(
        pb.GenerateRequest(session_id=a, text="ab", max_tokens=4000), metadata=identity("alice")
    )
    first = await generation.read()  # the generation now holds the session
    err = await expect_error(step(rpc.stub, a, tokens([1])))
    assert_status(err, grpc.StatusCode.ABORTED, "session_id")
    assert "already running" in (err.details() or "")
    generation.cancel()
    await asyncio.sleep(0.05)
    info = await rpc.stub.GetSession(pb.GetSessionRequest(session_id=a), metadata=identity("alice"))
    # The refused step added nothing: only the prompt and the generated tokens count.
    assert info.session.step_count >= first.step_count
    assert info.session.step_count < 2 + 4000


async def test_stream_protocol_errors_are_in_band(rpc: Running) -> None:
    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(request_id="early", step=tokens([1]))
        yield pb.StreamRequest(
            request_id="open", open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))
        )
        yield pb.StreamRequest(
            request_id="again", open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))
        )
        yield pb.StreamRequest(request_id="empty")
        yield pb.StreamRequest(request_id="control", control=pb.CONTROL_ACTION_UNSPECIFIED)
        yield pb.StreamRequest(request_id="ok", step=tokens([1]))

    replies = {r.request_id: r async for r in rpc.stub.Stream(requests())}
    assert (replies["early"].error.code_name, replies["early"].error.field) == (
        "FAILED_PRECONDITION",
        "step",
    )
    assert replies["open"].HasField("session")
    assert (replies["again"].error.code_name, replies["again"].error.field) == (
        "FAILED_PRECONDITION",
        "open",
    )
    assert (replies["empty"].error.code_name, replies["empty"].error.field) == (
        "INVALID_ARGUMENT",
        "kind",
    )
    assert replies["control"].error.field == "control"
    assert replies["ok"].result.step_count == 1


@pytest.mark.parametrize(
    ("model", "bad", "field", "fragment"), BAD_INPUTS[:3] + BAD_INPUTS[9:10] + BAD_INPUTS[13:14]
)
async def test_stream_errors_are_in_band_and_the_stream_carries_on(
    rpc: Running, model: str, bad: pb.StepInput, field: str, fragment: str
) -> None:
    twin = await open_session(rpc.stub, model)
    await step(rpc.stub, twin, PREFIX[model])

    async def requests() -> AsyncIterator[pb.StreamRequest]:
        yield pb.StreamRequest(
            request_id="open", open=pb.OpenSession(model=pb.ModelRef(name=model))
        )
        yield pb.StreamRequest(request_id="prefix", step=PREFIX[model])
        yield pb.StreamRequest(request_id="bad", step=bad)
        yield pb.StreamRequest(request_id="next", step=NEXT[model])

    replies = {
        r.request_id: r async for r in rpc.stub.Stream(requests(), metadata=identity("alice"))
    }
    error = replies["bad"].error
    assert (error.code, error.code_name) == (3, "INVALID_ARGUMENT")
    assert error.field == field.replace("input", "step", 1)
    assert error.message.startswith(error.field + ": ") and fragment in error.message
    expected = await step(rpc.stub, twin, NEXT[model])
    assert replies["next"].result.step_count == expected.step_count
    assert replies["next"].result.outputs[0].tensor.raw_data == expected.outputs[0].tensor.raw_data


async def test_predict_names_the_sequence(rpc: Running) -> None:
    request = pb.PredictRequest(
        model=pb.ModelRef(name=GRU_LM), sequences=[tokens([1, 2]), tokens([3, 4, 30])]
    )
    err = await expect_error(rpc.stub.Predict(request))
    assert_status(err, INVALID, "sequences[1].tokens.ids[2]")
    err = await expect_error(rpc.stub.Predict(pb.PredictRequest(model=pb.ModelRef(name=GRU_LM))))
    assert_status(err, INVALID, "sequences")
    bad_shape = pb.PredictRequest(
        model=pb.ModelRef(name=REGRESSOR), sequences=[features(np.ones((2, 3), np.float32))]
    )
    err = await expect_error(rpc.stub.Predict(bad_shape))
    assert_status(err, INVALID, "sequences[0].features.shape")


async def _step_count(running: Running, session_id: str) -> int:
    request = pb.GetSessionRequest(session_id=session_id)
    reply = await running.stub.GetSession(request, metadata=identity("alice"))
    return int(reply.session.step_count)


async def _drain(call: AsyncIterator[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    return [reply async for reply in call]


async def test_full_queue_is_resource_exhausted_with_a_retry_hint(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(max_queue=1)
    running_step, queued, refused, twin = [
        await open_session(running.stub, GRU_LM) for _ in range(4)
    ]
    with hold_model(running, GRU_LM) as hold:
        first = asyncio.ensure_future(step(running.stub, running_step, tokens([1])))
        while not hold.entered.is_set():
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(step(running.stub, queued, tokens([1])))
        await asyncio.sleep(0.1)  # now the queue holds one step
        err = await expect_error(step(running.stub, refused, tokens([1])))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue 1" in (err.details() or "")
        retry_ms = int(dict(err.trailing_metadata() or ())["retry-after-ms"])
        assert retry_ms > 0

        async def requests() -> AsyncIterator[pb.StreamRequest]:
            yield pb.StreamRequest(open=pb.OpenSession(session_id=refused))
            yield pb.StreamRequest(request_id="full", step=tokens([1]))

        replies = [r async for r in running.stub.Stream(requests(), metadata=identity("alice"))]
        assert replies[1].error.code_name == "RESOURCE_EXHAUSTED"
        assert replies[1].error.retry_after_ms > 0
        hold.release.set()
        assert (await first).step_count == 1 and (await second).step_count == 1
    await assert_same_next_step(running.stub, refused, twin, tokens([2]))
