"""Snapshots move a session between server instances, and a restart loses nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import (
    Running,
    expect_error,
    identity,
    make_settings,
    open_session,
    output_array,
    running_server,
    step,
    tokens,
)
from tiny_models import GRU_LM, LSTM_LM, build_language_model, run_whole_sequence

PREFIX = [3, 1, 4, 1, 5, 9, 2]
NEXT = [6, 5, 3]
TOLERANCE = 1e-5


async def _export(running: Running, session_id: str, who: str = "alice") -> bytes:
    reply = await running.stub.ExportState(
        pb.ExportStateRequest(session_id=session_id), metadata=identity(who)
    )
    return bytes(reply.snapshot)


async def _import(running: Running, snapshot: bytes, who: str = "alice") -> pb.SessionInfo:
    reply = await running.stub.ImportState(
        pb.ImportStateRequest(snapshot=snapshot), metadata=identity(who)
    )
    return reply.session


async def test_export_then_import_on_another_server_continues_identically(
    serve: Callable[..., Awaitable[Running]], tiny_repository: Path
) -> None:
    first, second = await serve(), await serve()
    a = await open_session(first.stub, LSTM_LM)
    await step(first.stub, a, tokens(PREFIX))
    snapshot = await _export(first, a)
    moved = await _import(second, snapshot, who="bob")  # the importer owns the new session
    assert (moved.model, moved.version, moved.step_count) == (LSTM_LM, 2, len(PREFIX))
    there = await step(second.stub, moved.session_id, tokens(NEXT), who="bob")
    here = await step(first.stub, a, tokens(NEXT))
    np.testing.assert_array_equal(output_array(there), output_array(here))
    reference = run_whole_sequence(tiny_repository / LSTM_LM, np.array(PREFIX + NEXT))["logits"]
    np.testing.assert_allclose(output_array(there), reference[len(PREFIX) :], atol=TOLERANCE)
    assert there.step_count == len(PREFIX) + len(NEXT)


async def test_foreign_weights_or_unserved_model_are_refused(
    serve: Callable[..., Awaitable[Running]], tmp_path: Path, tiny_repository: Path
) -> None:
    home = await serve()
    a = await open_session(home.stub, LSTM_LM)
    await step(home.stub, a, tokens(PREFIX))
    snapshot = await _export(home, a)
    # Same model name and versions, other weights.
    build_language_model(tmp_path, LSTM_LM, "lstm", layers=2, hidden=12, seeds={1: 98, 2: 99})
    foreign = await serve(repository=tmp_path)
    err = await expect_error(_import(foreign, snapshot))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("snapshot: ")
    assert "weights" in (err.details() or "")
    only_gru = await serve(models=[GRU_LM])
    err = await expect_error(_import(only_gru, snapshot))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not serve" in (err.details() or "")


async def test_signed_snapshots_need_the_same_secret(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    signer = await serve(snapshot_secret="first-secret")
    a = await open_session(signer.stub, GRU_LM)
    await step(signer.stub, a, tokens(PREFIX))
    snapshot = await _export(signer, a)
    other = await serve(snapshot_secret="another-secret")
    err = await expect_error(_import(other, snapshot))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("snapshot: ")
    same = await serve(snapshot_secret="first-secret")
    assert (await _import(same, snapshot)).step_count == len(PREFIX)


async def test_restart_with_snapshot_dir_continues_identically(
    tiny_repository: Path, tmp_path: Path
) -> None:
    settings = make_settings(tiny_repository, snapshot_dir=tmp_path / "snapshots")
    async with running_server(settings) as before:
        lstm = await open_session(before.stub, LSTM_LM)
        await step(before.stub, lstm, tokens(PREFIX))
        gru = await open_session(before.stub, GRU_LM, who="bob")
        await step(before.stub, gru, tokens([7, 7]), who="bob")
        await before.server.stop(1.0)  # graceful: drain, then write every live session
    assert any((tmp_path / "snapshots").iterdir())
    async with running_server(settings) as after:
        resumed = await step(after.stub, lstm, tokens(NEXT))
        reference = run_whole_sequence(tiny_repository / LSTM_LM, np.array(PREFIX + NEXT))
        np.testing.assert_allclose(
            output_array(resumed), reference["logits"][len(PREFIX) :], atol=TOLERANCE, rtol=0
        )
        assert resumed.step_count == len(PREFIX) + len(NEXT)
        # Ownership survives the restart too.
        err = await expect_error(step(after.stub, gru, tokens([1]), who="alice"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert (await step(after.stub, gru, tokens([1]), who="bob")).step_count == 3
