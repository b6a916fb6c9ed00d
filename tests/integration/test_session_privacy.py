"""Sessions are private over the wire: no existence oracle, logs nobody can forge or flood, and a
cap on the live sessions of one principal."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2, status_pb2
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.kserve.v2 import grpc_service_pb2_grpc
from rnnserve.server.logs import ContextFilter, JsonFormatter, PlainFormatter, short_id
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, expect_error, identity, open_session, step, tokens
from tiny_models import GRU_LM

MALLORY = identity("mallory")
ALICE = identity("alice")
FORGED = "x\n2026-01-01 00:00:00,000 INFO    rnnserve.server.sessions [request=- session=-] ok"
HUGE = "A" * 102_400  # 100 KB
LONG = "B" * 128  # as long as the default max_id_length allows
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG) ")


def _details(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata from the call's rich status."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo in the status")


def _calls(stub: Any, session_id: str, metadata: Any) -> list[Awaitable[Any]]:
    """Every call that names a session."""
    return [
        stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=metadata),
        stub.Step(pb.StepRequest(session_id=session_id, input=tokens([1])), metadata=metadata),
        stub.ResetSession(pb.ResetSessionRequest(session_id=session_id), metadata=metadata),
        stub.ExportState(pb.ExportStateRequest(session_id=session_id), metadata=metadata),
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=metadata),
    ]


async def _answers(stub: Any, session_id: str, metadata: Any) -> list[tuple[Any, ...]]:
    """What each call says about `session_id`, with the id's own echo written as <id>."""
    answers = []
    for call in _calls(stub, session_id, metadata):
        err = await expect_error(call)
        details = (err.details() or "").replace(short_id(session_id), "<id>")
        answers.append((err.code(), details, _details(err)))
    return answers


async def _stream_open_answer(stub: Any, session_id: str, metadata: Any) -> tuple[Any, ...]:
    async def requests() -> Any:
        yield pb.StreamRequest(open=pb.OpenSession(session_id=session_id))

    replies = [reply async for reply in stub.Stream(requests(), metadata=metadata)]
    error = replies[0].error
    return error.code_name, error.message.replace(short_id(session_id), "<id>"), error.field


async def test_a_non_owner_cannot_tell_unknown_closed_expired_and_foreign_apart(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(session_ttl_s=0.4)
    expired = await open_session(running.stub, GRU_LM)
    await asyncio.sleep(0.8)  # idle past its TTL (reaped, or found expired on use)
    foreign = await open_session(running.stub, GRU_LM)
    await step(running.stub, foreign, tokens([1, 2]))
    closed = await open_session(running.stub, GRU_LM)
    await running.stub.CloseSession(pb.CloseSessionRequest(session_id=closed), metadata=ALICE)
    unknown = "Zq3kT0aBcdefghijklmnopqrstuvwxyz"
    cases = {"unknown": unknown, "closed": closed, "expired": expired, "foreign": foreign}
    answers = {name: await _answers(running.stub, sid, MALLORY) for name, sid in cases.items()}
    expected = (
        grpc.StatusCode.NOT_FOUND,
        "session_id: session '<id>' not found",
        ("SESSION_NOT_FOUND", {"field": "session_id"}),  # no reason metadata
    )
    for name, replies in answers.items():
        assert replies == [expected] * 5, name
    streamed = {
        name: await _stream_open_answer(running.stub, sid, MALLORY) for name, sid in cases.items()
    }
    assert set(streamed.values()) == {
        ("NOT_FOUND", "open.session_id: session '<id>' not found", "open.session_id")
    }
    # The foreign session is untouched by all of that, and its owner still has it.
    assert (await step(running.stub, foreign, tokens([3]))).step_count == 3


async def test_the_owner_still_learns_why_a_session_is_gone(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(session_ttl_s=0.4)
    expired = await open_session(running.stub, GRU_LM)
    await asyncio.sleep(0.8)
    closed = await open_session(running.stub, GRU_LM)
    await running.stub.CloseSession(pb.CloseSessionRequest(session_id=closed), metadata=ALICE)
    for session_id, reason, says in ((closed, "closed", "was closed"), (expired, "expired", "TTL")):
        err = await expect_error(step(running.stub, session_id, tokens([1])))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert says in (err.details() or "")
        assert _details(err) == ("SESSION_NOT_FOUND", {"field": "session_id", "reason": reason})


async def test_hostile_session_ids_get_a_plain_bounded_not_found(rpc: Running) -> None:
    for session_id in (LONG, FORGED, "id\x1b[2J\x1b[31m"):
        err = await expect_error(step(rpc.stub, session_id, tokens([1])))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        details = err.details() or ""
        assert details == f"session_id: session '{short_id(session_id)}' not found"
        assert len(details) < 100 and "\n" not in details and "\x1b" not in details


async def test_a_100kb_session_id_gets_a_small_clean_refusal(rpc: Running) -> None:
    # Not a metadata-size error: the id-length cap refuses it (INVALID_ARGUMENT naming the cap),
    # or, past a raised cap, the session is simply not found; neither answer repeats the id.
    err = await expect_error(step(rpc.stub, HUGE, tokens([1])))
    details = err.details() or ""
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details
    assert details.startswith("session_id: ") and len(details) < 100
    assert "A" * 9 not in details


@contextmanager
def server_log(level: int = logging.INFO) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The server's log lines, plain and JSON, as `configure_logging` formats them."""
    root = logging.getLogger()
    plain, structured = io.StringIO(), io.StringIO()
    handlers = []
    for stream, formatter in ((plain, PlainFormatter()), (structured, JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.addFilter(ContextFilter())
        handler.setFormatter(formatter)
        root.addHandler(handler)
        handlers.append(handler)
    old_level = root.level
    root.setLevel(level)
    try:
        yield plain, structured
    finally:
        root.setLevel(old_level)
        for handler in handlers:
            root.removeHandler(handler)


async def test_hostile_session_ids_make_one_capped_escaped_log_line_each(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve()
    hostile = (FORGED, "id\x1b[2J\x1b[31mred", LONG, HUGE)
    with server_log() as (plain, structured):
        for session_id in hostile:
            await expect_error(step(running.stub, session_id, tokens([1])))
    lines = plain.getvalue().splitlines()
    refusals = [line for line in lines if "Step -> " in line]
    assert len(refusals) == len(hostile)  # one line per refused call, no more
    for line in lines:
        assert LINE_START.match(line), line  # nothing starts a line but the formatter
        assert "\x1b" not in line and len(line) < 400
    assert "session 'x\\n2026-0…' not found" in refusals[0]  # the newline, escaped
    entries = [json.loads(line) for line in structured.getvalue().splitlines()]
    not_found = [entry["session_id"] for entry in entries if entry.get("code") == "NOT_FOUND"]
    # (the 100 KB id may be refused by the id-length cap before it is looked up)
    assert not_found[:3] == [short_id(s) for s in hostile[:3]]
    assert all(len(json.dumps(entry)) < 600 for entry in entries)


async def test_info_logs_show_a_session_prefix_and_never_its_owner(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve()
    with server_log() as (plain, structured):
        session_id = await open_session(running.stub, GRU_LM, who="carol-the-owner")
        await step(running.stub, session_id, tokens([1]), who="carol-the-owner")
        await running.stub.CloseSession(
            pb.CloseSessionRequest(session_id=session_id), metadata=identity("carol-the-owner")
        )
    for text in (plain.getvalue(), structured.getvalue()):
        assert short_id(session_id) in text  # enough to follow the session
        assert session_id not in text and "carol-the-owner" not in text


async def test_one_principal_cannot_take_every_session_slot(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    running = await serve(max_sessions_per_principal=2, max_sessions=10)
    first = await open_session(running.stub, GRU_LM, who="greedy")
    await open_session(running.stub, GRU_LM, who="greedy")
    err = await expect_error(open_session(running.stub, GRU_LM, who="greedy"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_sessions_per_principal" in (err.details() or "")
    assert "maximum of 2" in (err.details() or "")
    other = await open_session(running.stub, GRU_LM, who="modest")  # others still get in
    assert (await step(running.stub, other, tokens([1]), who="modest")).step_count == 1
    await running.stub.CloseSession(
        pb.CloseSessionRequest(session_id=first), metadata=identity("greedy")
    )
    await open_session(running.stub, GRU_LM, who="greedy")  # closing gave the slot back


def _sequence_request(sequence: str, *, start: bool = False) -> kpb.ModelInferRequest:
    message = kpb.ModelInferRequest(model_name=GRU_LM, id="r")
    message.inputs.add(name="tokens", datatype="INT64", shape=[1, 1])
    message.raw_input_contents.append(np.asarray([1], "<i8").tobytes())
    message.parameters["sequence_id"].string_param = sequence
    message.parameters["sequence_start"].bool_param = start
    return message


async def test_kserve_sequences_of_another_caller_look_never_started(rpc: Running) -> None:
    kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(rpc.channel)
    await kserve.ModelInfer(_sequence_request("seq-a", start=True), metadata=ALICE)
    ended = _sequence_request("seq-b", start=True)
    ended.parameters["sequence_end"].bool_param = True
    await kserve.ModelInfer(ended, metadata=ALICE)

    async def answer(sequence: str, who: Any) -> tuple[Any, str]:
        err = await expect_error(kserve.ModelInfer(_sequence_request(sequence), metadata=who))
        return err.code(), (err.details() or "").replace(sequence, "<seq>")

    never = await answer("seq-never", MALLORY)
    assert never[0] == grpc.StatusCode.INVALID_ARGUMENT and "START flag" in never[1]
    assert await answer("seq-a", MALLORY) == never  # alice's live sequence
    assert await answer("seq-b", MALLORY) == never  # alice's ended sequence
    assert (await answer("seq-b", ALICE))[1].endswith("(it was ended)")  # its owner learns why
    await kserve.ModelInfer(_sequence_request("seq-a"), metadata=ALICE)  # alice's goes on
