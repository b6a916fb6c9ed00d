"""The Open Inference Protocol front door at the wire level (the server's own generated stubs):
both front doors in one batch and one session table, restarts, typed contents, health."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tiny_models as tm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.kserve.v2 import grpc_service_pb2_grpc
from server_helpers import (
    Running,
    expect_error,
    hold_model,
    make_settings,
    open_session,
    output_array,
    running_server,
    step,
    tokens,
)

SERVICE = "inference.GRPCInferenceService"


def stub(running: Running) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(running.channel)


def request(
    ids: list[int],
    sequence: Any = None,
    *,
    start: bool = False,
    end: bool = False,
    model: str = tm.GRU_LM,
    raw: bool = True,
    **params: Any,
) -> kpb.ModelInferRequest:
    message = kpb.ModelInferRequest(model_name=model, id="r")
    tensor = message.inputs.add(name="tokens", datatype="INT64", shape=[1, len(ids)])
    if raw:
        message.raw_input_contents.append(np.asarray(ids, "<i8").tobytes())
    else:
        tensor.contents.int64_contents.extend(ids)
    if isinstance(sequence, str):
        message.parameters["sequence_id"].string_param = sequence
    elif sequence is not None:
        message.parameters["sequence_id"].int64_param = sequence
    message.parameters["sequence_start"].bool_param = start
    message.parameters["sequence_end"].bool_param = end
    for key, value in params.items():
        message.parameters[key].string_param = value
    return message


def logits(response: kpb.ModelInferResponse) -> Any:
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(shape)


async def test_health_and_reflection_name_the_second_front_door(rpc: Running) -> None:
    health = health_pb2_grpc.HealthStub(rpc.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    live = await stub(rpc).ServerLive(kpb.ServerLiveRequest())
    assert live.live


async def test_typed_contents_equal_raw_contents_and_last_step_only(rpc: Running) -> None:
    kserve = stub(rpc)
    raw = await kserve.ModelInfer(request([1, 2, 3], 1, start=True))
    typed = await kserve.ModelInfer(request([1, 2, 3], 2, start=True, raw=False))
    np.testing.assert_array_equal(logits(raw), logits(typed))
    assert logits(raw).shape == (1, 3, len(tm.LM_VOCABULARY))
    last = await kserve.ModelInfer(request([4, 5], 1, output_steps="last"))
    assert logits(last).shape == (1, 1, len(tm.LM_VOCABULARY))
    assert last.parameters["step_count"].int64_param == 5


async def test_both_front_doors_drive_one_session_table(rpc: Running) -> None:
    """A sequence opened through KServe and a native session fed the same tokens agree, step by
    step, whichever door each step goes through."""
    kserve = stub(rpc)
    native = await open_session(rpc.stub, tm.GRU_LM, who="anonymous")
    opened = await kserve.ModelInfer(request([3, 1], "s-1", start=True))
    session_id = opened.parameters["rnnserve_session_id"].string_param
    theirs = output_array(await step(rpc.stub, native, tokens([3, 1]), who="anonymous"))
    np.testing.assert_allclose(logits(opened)[0], theirs, rtol=1e-6)
    # the next step of the KServe sequence, sent through the native API by its session id
    mine = output_array(await step(rpc.stub, session_id, tokens([2]), who="anonymous"))
    theirs = output_array(await step(rpc.stub, native, tokens([2]), who="anonymous"))
    np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    after = await kserve.ModelInfer(request([7], "s-1", end=True))
    assert after.parameters["step_count"].int64_param == 4
    err = await expect_error(kserve.ModelInfer(request([7], "s-1")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "ended" in (err.details() or "")


async def test_steps_of_both_front_doors_share_one_batch(rpc: Running) -> None:
    kserve = stub(rpc)
    await kserve.ModelInfer(request([1], 9, start=True))
    native = await open_session(rpc.stub, tm.GRU_LM, who="anonymous")
    other = await open_session(rpc.stub, tm.GRU_LM, who="anonymous")
    before = await kserve.ModelStatistics(kpb.ModelStatisticsRequest(name=tm.GRU_LM))
    with hold_model(rpc, tm.GRU_LM) as hold:
        blocker = asyncio.create_task(step(rpc.stub, native, tokens([1]), who="anonymous"))
        await asyncio.to_thread(hold.entered.wait, 5)
        # these two queue behind the held call and must then run as one batch
        queued = [
            asyncio.ensure_future(kserve.ModelInfer(request([2], 9))),
            asyncio.create_task(step(rpc.stub, other, tokens([2]), who="anonymous")),
        ]
        await asyncio.sleep(0.2)
        hold.release.set()
        await asyncio.gather(blocker, *queued)
    after = await kserve.ModelStatistics(kpb.ModelStatisticsRequest(name=tm.GRU_LM))
    inferences = after.model_stats[0].inference_count - before.model_stats[0].inference_count
    executions = after.model_stats[0].execution_count - before.model_stats[0].execution_count
    assert (inferences, executions) == (3, 2)  # the held call, then both doors in one call


async def test_sequences_survive_a_graceful_restart(tiny_repository: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_repository, snapshot_dir=tmp_path / "snapshots")
    async with running_server(settings) as before:
        first = await stub(before).ModelInfer(request([1, 2], 77, start=True))
        await before.server.stop(1.0)
    async with running_server(settings) as after:
        resumed = await stub(after).ModelInfer(request([3], 77))
        assert resumed.parameters["step_count"].int64_param == 3
        fresh = await stub(after).ModelInfer(request([1, 2, 3], 78, start=True))
        np.testing.assert_allclose(logits(resumed)[0, -1], logits(fresh)[0, -1], rtol=1e-6)
        assert first.parameters["rnnserve_session_id"] == resumed.parameters["rnnserve_session_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"raw_input_contents": [b"\0" * 7]}, "raw_input_contents[0]"),
        ({"model_version": "x"}, "model_version"),
        ({"params": {"output_steps": "some"}}, "parameters.output_steps"),
    ],
)
async def test_malformed_requests_name_the_field(
    rpc: Running, change: dict[str, Any], field: str
) -> None:
    message = request([1], 3, start=True, **change.pop("params", {}))
    if "raw_input_contents" in change:
        del message.raw_input_contents[:]
        message.raw_input_contents.extend(change["raw_input_contents"])
    if "model_version" in change:
        message.model_version = change["model_version"]
    err = await expect_error(stub(rpc).ModelInfer(message))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(f"{field}:")


async def test_sequences_obey_the_session_ttl_and_limits(serve: Any) -> None:
    running = await serve(session_ttl_s=0.2, max_sessions=1)
    kserve = stub(running)
    await kserve.ModelInfer(request([1], 1, start=True))
    full = await expect_error(kserve.ModelInfer(request([1], 2, start=True)))
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await asyncio.sleep(0.35)
    expired = await expect_error(kserve.ModelInfer(request([2], 1)))
    assert expired.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expired" in (expired.details() or "")
    restarted = await kserve.ModelInfer(request([2], 1, start=True))  # START begins it anew
    assert restarted.parameters["step_count"].int64_param == 1
