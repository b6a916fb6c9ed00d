"""Restarts never erase saved sessions; the snapshot dir and secret are checked at start.

A start that cannot restore a saved session (another secret, a model not served) keeps it aside
in snapshot_dir, and a later start with the right configuration restores it: the session then
continues bit for bit as it would have without the restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import REGISTRY
from rnnserve.server import snapshot, snapshot_files
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import SnapshotSecretRequired
from rnnserve.server.security import SecurityConfigError
from rnnserve.server.settings import Settings
from rnnserve.server.transport.errors import describe
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
from tiny_models import GRU_LM, LSTM_LM, RNN_LM

NEXT = [6, 5, 3, 1]
# (model, owner, prefix): five sessions on three models and two owners.
SESSIONS = [
    (LSTM_LM, "alice", [3, 1, 4, 1, 5]),
    (GRU_LM, "alice", [9, 2, 6]),
    (RNN_LM, "bob", [5, 3, 5, 8, 9, 7]),
    (LSTM_LM, "bob", [2, 7]),
    (GRU_LM, "carol", [1, 8, 2, 8]),
]


def unrestored(reason: str) -> float:
    return REGISTRY.get_sample_value("rnnserve_snapshot_unrestored_total", {"reason": reason}) or 0


async def open_and_step(
    running: Running, plan: list[tuple[str, str, list[int]]]
) -> list[tuple[str, str]]:
    """Open and feed each planned session; [(session id, owner)]."""
    opened = []
    for model, owner, prefix in plan:
        session_id = await open_session(running.stub, model, who=owner)
        await step(running.stub, session_id, tokens(prefix), who=owner)
        opened.append((session_id, owner))
    return opened


async def expected_next_outputs(
    serve: Callable[..., Awaitable[Running]],
    source: Running,
    opened: list[tuple[str, str]],
    secret: str | None,
) -> list[npt.NDArray[np.float32]]:
    """Each session's next-step outputs, computed on a copy in another server (its snapshot
    imported there), so the originals stay untouched for the restart."""
    reference = await serve(snapshot_secret=secret)
    outputs = []
    for session_id, owner in opened:
        exported = await source.stub.ExportState(
            pb.ExportStateRequest(session_id=session_id), metadata=identity(owner)
        )
        copy = await reference.stub.ImportState(
            pb.ImportStateRequest(snapshot=exported.snapshot), metadata=identity(owner)
        )
        result = await step(reference.stub, copy.session.session_id, tokens(NEXT), who=owner)
        outputs.append(output_array(result))
    return outputs


async def restored_count(running: Running, opened: list[tuple[str, str]]) -> int:
    """How many of `opened` are live on `running` (owners asking for their own sessions)."""
    count = 0
    for session_id, owner in opened:
        try:
            await running.stub.GetSession(
                pb.GetSessionRequest(session_id=session_id), metadata=identity(owner)
            )
            count += 1
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
    return count


async def assert_continue_identically(
    running: Running,
    plan: list[tuple[str, str, list[int]]],
    opened: list[tuple[str, str]],
    expected: list[npt.NDArray[np.float32]],
) -> None:
    """Each restored session's next step equals its copy's, bit for bit, at the right count."""
    for (_, _, prefix), (session_id, owner), want in zip(plan, opened, expected, strict=True):
        result = await step(running.stub, session_id, tokens(NEXT), who=owner)
        np.testing.assert_array_equal(output_array(result), want)
        assert result.step_count == len(prefix) + len(NEXT)


def kept_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{snapshot_files.KEPT_PREFIX}*"))


async def test_wrong_secret_then_right_secret_restores_every_session(
    serve: Callable[..., Awaitable[Running]], tiny_repository: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "snapshots"
    right = make_settings(tiny_repository, snapshot_dir=directory, snapshot_secret="right-secret")
    wrong = make_settings(tiny_repository, snapshot_dir=directory, snapshot_secret="wrong-secret")
    async with running_server(right) as first:
        opened = await open_and_step(first, SESSIONS)
        expected = await expected_next_outputs(serve, first, opened, "right-secret")
    assert (directory / snapshot.FILE_NAME).is_file()

    counts = []
    signature_before = unrestored("signature")
    for attempt in range(2):  # twice: a second wrong start must not lose what the first kept
        async with running_server(wrong) as mistaken:
            counts.append(await restored_count(mistaken, opened))
        assert len(kept_files(directory)) == 1, attempt  # consolidated, never overwritten
    assert unrestored("signature") - signature_before == 2 * len(SESSIONS)

    async with running_server(right) as fixed:
        counts.append(await restored_count(fixed, opened))
        await assert_continue_identically(fixed, SESSIONS, opened, expected)
    assert kept_files(directory) == []  # everything in them is live again
    print(f"\nsessions restored per start (wrong, wrong, right secret): {counts} of {len(opened)}")
    assert counts == [0, 0, len(SESSIONS)]


async def test_fewer_models_then_all_models_restores_every_session(
    serve: Callable[..., Awaitable[Running]], tiny_repository: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "snapshots"
    plan = [s for s in SESSIONS if s[0] in (LSTM_LM, GRU_LM)]
    every = make_settings(tiny_repository, snapshot_dir=directory)
    fewer = make_settings(tiny_repository, snapshot_dir=directory, models=[LSTM_LM])
    async with running_server(every) as first:
        opened = await open_and_step(first, plan)
        expected = await expected_next_outputs(serve, first, opened, None)
    model_before = unrestored("model")
    async with running_server(fewer) as partial:
        partly = await restored_count(partial, opened)
    lstm_sessions = sum(1 for s in plan if s[0] == LSTM_LM)
    assert partly == lstm_sessions
    assert unrestored("model") - model_before == len(plan) - lstm_sessions
    async with running_server(every) as whole:
        assert await restored_count(whole, opened) == len(plan)
        await assert_continue_identically(whole, plan, opened, expected)
    print(f"\nsessions restored (fewer models, all models): {partly}, {len(plan)} of {len(plan)}")


async def test_an_unreadable_sessions_file_is_moved_aside_not_overwritten(
    tiny_repository: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "snapshots"
    directory.mkdir()
    damaged = b"RNNSESS\x00 this is not what a save writes"
    (directory / snapshot.FILE_NAME).write_bytes(damaged)
    settings = make_settings(tiny_repository, snapshot_dir=directory)
    async with running_server(settings) as running:
        await open_session(running.stub, GRU_LM)
    moved = sorted(directory.glob(f"{snapshot_files.UNREADABLE_PREFIX}*"))
    assert [path.read_bytes() for path in moved] == [damaged]  # the bytes, as they were
    assert len(snapshot.read_file(directory / snapshot.FILE_NAME)) == 1  # the new save


async def test_a_session_kept_twice_is_restored_once(tiny_repository: Path, tmp_path: Path) -> None:
    # A start that crashed after writing its kept-aside file but before removing the files it
    # read leaves two copies of those sessions: the next start restores each once.
    directory = tmp_path / "snapshots"
    settings = make_settings(tiny_repository, snapshot_dir=directory)
    async with running_server(settings) as first:
        opened = await open_and_step(first, SESSIONS[:2])
    saved = directory / snapshot.FILE_NAME
    snapshot_files.keep_aside(directory, snapshot.read_file(saved))
    async with running_server(settings) as second:
        assert await restored_count(second, opened) == 2
        assert len(second.server.engine.sessions) == 2
    assert kept_files(directory) == []


async def test_a_forged_header_is_invalid_argument_at_import(rpc: Running) -> None:
    session_id = await open_session(rpc.stub, GRU_LM)
    await step(rpc.stub, session_id, tokens([1, 2]))
    exported = await rpc.stub.ExportState(
        pb.ExportStateRequest(session_id=session_id), metadata=identity("alice")
    )
    data = bytes(exported.snapshot)
    (header_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16 : 16 + header_len])
    header["step_count"] = 2**62  # accepted before, then INTERNAL on use
    forged_header = json.dumps(header).encode()
    body = data[:12] + struct.pack("<I", len(forged_header)) + forged_header
    body += data[16 + header_len : -32]
    forged = body + hashlib.sha256(body).digest()  # a forger can always recompute the checksum
    err = await expect_error(
        rpc.stub.ImportState(pb.ImportStateRequest(snapshot=forged), metadata=identity("alice"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "step_count" in (err.details() or "")


# ---- the snapshot dir must be writable at start ---------------------------------------------


def _unwritable_dirs(tmp_path: Path) -> dict[str, Path]:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    cases = {"missing parent": tmp_path / "no" / "such" / "dir", "a file in the way": in_the_way}
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o555)
        cases["read-only"] = read_only
    return cases


async def test_an_unwritable_snapshot_dir_fails_the_start(
    tiny_repository: Path, tmp_path: Path
) -> None:
    for case, directory in _unwritable_dirs(tmp_path).items():
        settings = make_settings(tiny_repository, snapshot_dir=directory)
        with pytest.raises(OSError, match="snapshot_dir") as caught:
            async with running_server(settings):
                pass
        assert str(directory) in str(caught.value), case
    assert not (tmp_path / "no").exists()  # nothing was created on the way


@pytest.mark.slow
def test_rnnserve_serve_exits_with_the_reason_for_an_unwritable_snapshot_dir(
    tiny_repository: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "missing" / "snapshots"
    finished = subprocess.run(
        [
            sys.executable, "-m", "rnnserve.server.cli", "serve",
            "--port", "0", "--metrics-port", "-1",
            "--model-repository", str(tiny_repository),
            "--snapshot-dir", str(directory),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert finished.returncode == 1
    assert f"snapshot_dir {directory}" in finished.stderr
    assert "Traceback" not in finished.stderr


# ---- the signing secret ------------------------------------------------------------------------


def _settings(tiny_repository: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model_repository": tiny_repository, "metrics_port": None}
    values.update(overrides)
    return Settings(**values)


async def test_an_exposed_server_without_a_secret_refuses_imports(
    tiny_repository: Path,
) -> None:
    # The engine alone: nothing binds 0.0.0.0, but the engine knows where it would listen.
    exposed = InferenceEngine(_settings(tiny_repository, host="0.0.0.0"))
    loopback = InferenceEngine(_settings(tiny_repository))
    signed = InferenceEngine(_settings(tiny_repository, host="0.0.0.0", snapshot_secret="k" * 32))
    for engine in (exposed, loopback, signed):
        await engine.start()
    try:
        view = await loopback.create_session(GRU_LM, 0, "alice")
        unsigned, _ = await loopback.export_state(view.session_id, "alice")
        with pytest.raises(SnapshotSecretRequired) as caught:
            await exposed.import_state(unsigned, "alice")
        failure = describe(caught.value)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.message.startswith("snapshot: snapshot import needs a signing secret")
        assert len(exposed.sessions) == 0
        view = await signed.create_session(GRU_LM, 0, "alice")
        data, _ = await signed.export_state(view.session_id, "alice")
        assert (await signed.import_state(data, "bob")).model == GRU_LM
    finally:
        for engine in (exposed, loopback, signed):
            await engine.stop(0.5)


async def test_an_exposed_server_keeping_snapshots_needs_a_secret(
    tiny_repository: Path, tmp_path: Path
) -> None:
    with pytest.raises(SecurityConfigError, match="--snapshot-secret-file"):
        InferenceEngine(_settings(tiny_repository, host="0.0.0.0", snapshot_dir=tmp_path))
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-random-secret\n")
    engine = InferenceEngine(
        _settings(
            tiny_repository, host="0.0.0.0", snapshot_dir=tmp_path, snapshot_secret_file=secret_file
        )
    )
    await engine.start()
    try:
        view = await engine.create_session(GRU_LM, 0, "alice")
        data, _ = await engine.export_state(view.session_id, "alice")
        assert snapshot.decode(data, b"a-random-secret").model == GRU_LM
        assert (await engine.import_state(data, "bob")).model == GRU_LM
    finally:
        await engine.stop(0.5)


async def test_the_secret_file_wins_and_is_stripped(
    serve: Callable[..., Awaitable[Running]], tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("  file-secret\n")
    from_file = await serve(snapshot_secret_file=secret_file, snapshot_secret="value-secret")
    session_id = await open_session(from_file.stub, GRU_LM)
    exported = await from_file.stub.ExportState(
        pb.ExportStateRequest(session_id=session_id), metadata=identity("alice")
    )
    assert snapshot.decode(exported.snapshot, b"file-secret").model == GRU_LM
    value_only = await serve(snapshot_secret="value-secret")
    err = await expect_error(
        value_only.stub.ImportState(
            pb.ImportStateRequest(snapshot=exported.snapshot), metadata=identity("alice")
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not match" in (err.details() or "")


@pytest.mark.parametrize("problem", ["missing", "empty", "whitespace", "a directory"])
def test_an_unusable_secret_file_fails_the_start(
    tiny_repository: Path, tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "secret"
    if problem == "empty":
        path.write_bytes(b"")
    elif problem == "whitespace":
        path.write_bytes(b" \n\t\n")
    elif problem == "a directory":
        path.mkdir()
    with pytest.raises(SecurityConfigError, match="snapshot_secret_file") as caught:
        InferenceEngine(_settings(tiny_repository, snapshot_secret_file=path))
    assert str(path) in str(caught.value)
