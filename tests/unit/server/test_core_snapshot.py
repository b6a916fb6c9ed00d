"""Snapshots: export -> import continues identically; bad, foreign and forged ones are refused."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, feed, tokens, twin_session
from rnnserve.server import snapshot
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidSnapshot, SessionNotFound

PREFIX = tokens(40, 7)
REST = tokens(41, 6)


@pytest.mark.parametrize("model", tm.LANGUAGE_MODELS)
async def test_export_then_import_on_a_second_engine_continues_identically(
    make_engine: Any, tiny_repository: Path, model: str
) -> None:
    first, second = await make_engine(), await make_engine()
    session = await twin_session(first, model, PREFIX)
    data, view = await first.export_state(session, ME)
    assert view.step_count == len(PREFIX)
    restored = await second.import_state(data, "bob")
    assert restored.step_count == len(PREFIX) and restored.model == model
    rows = await second.step(restored.session_id, "bob", REST, OutputOptions())
    whole = tm.run_whole_sequence(tiny_repository / model, np.concatenate([PREFIX, REST]))
    assert rows.outputs[0].tensor is not None
    np.testing.assert_allclose(rows.outputs[0].tensor, whole["logits"][len(PREFIX) :], atol=1e-5)
    assert rows.step_count == len(PREFIX) + len(REST)


async def _exported(engine: InferenceEngine, model: str = tm.LSTM_LM, version: int = 0) -> bytes:
    view = await engine.create_session(model, version, ME)
    await feed(engine, view.session_id, PREFIX)
    data, _ = await engine.export_state(view.session_id, ME)
    return data


async def test_corrupted_snapshots_are_refused(engine: InferenceEngine) -> None:
    data = await _exported(engine)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {
        "checksum mismatch": bytes(flipped),
        "truncated": data[:20],
        "bad magic": b"XXXXXXXX" + data[8:],
        "format version 9": data[:8] + struct.pack("<H", 9) + data[10:],
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidSnapshot, match=message) as caught:
            await engine.import_state(bad, ME)
        assert caught.value.field == "snapshot"


async def test_snapshot_of_another_model_version_or_weights_is_refused(
    engine: InferenceEngine,
) -> None:
    v1 = await _exported(engine, tm.LSTM_LM, 1)
    decoded = snapshot.decode(v1)
    # same shapes, other version number: refused because the weights fingerprint differs
    forged_version = snapshot.encode(
        snapshot.Snapshot(
            model=tm.LSTM_LM,
            version=2,
            weights_sha256=decoded.weights_sha256,
            step_count=3,
            state_names=decoded.state_names,
            states=decoded.states,
        )
    )
    with pytest.raises(InvalidSnapshot, match="other weights"):
        await engine.import_state(forged_version, ME)
    other_model = snapshot.encode(
        snapshot.Snapshot(
            model="some-other-model",
            version=1,
            weights_sha256="0" * 64,
            step_count=1,
            state_names=decoded.state_names,
            states=decoded.states,
        )
    )
    with pytest.raises(InvalidSnapshot, match="does not serve"):
        await engine.import_state(other_model, ME)
    gru = await _exported(engine, tm.GRU_LM)
    wrong_states = snapshot.decode(gru)
    relabelled = snapshot.encode(
        snapshot.Snapshot(
            model=tm.LSTM_LM,
            version=1,
            weights_sha256=decoded.weights_sha256,
            step_count=1,
            state_names=wrong_states.state_names,
            states=wrong_states.states,
        )
    )
    with pytest.raises(InvalidSnapshot, match="do not match"):
        await engine.import_state(relabelled, ME)


async def test_with_a_secret_snapshots_are_signed_and_forgeries_refused(
    make_engine: Any,
) -> None:
    signed_engine = await make_engine(snapshot_secret="s3cret")
    other_secret = await make_engine(snapshot_secret="another")
    plain_engine = await make_engine()
    signed = await _exported(signed_engine)
    view = await signed_engine.import_state(signed, ME)
    assert view.step_count == len(PREFIX)
    with pytest.raises(InvalidSnapshot, match="not signed"):
        await signed_engine.import_state(await _exported(plain_engine), ME)
    with pytest.raises(InvalidSnapshot, match="signature does not match"):
        await other_secret.import_state(signed, ME)
    # a forger who edits the state and recomputes the checksum still lacks the key
    decoded = snapshot.decode(signed, b"s3cret")
    tampered = snapshot.Snapshot(
        model=decoded.model,
        version=decoded.version,
        weights_sha256=decoded.weights_sha256,
        step_count=decoded.step_count,
        state_names=decoded.state_names,
        states=[s + 1 for s in decoded.states],
    )
    with pytest.raises(InvalidSnapshot, match="signature does not match"):
        await signed_engine.import_state(snapshot.encode(tampered, b"guess"), ME)


def test_snapshot_format_round_trip_and_non_finite_refused() -> None:
    states = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), dtype=np.float32)]
    snap = snapshot.Snapshot("m", 3, "a" * 64, 12, ["h0", "c0"], states)
    back = snapshot.decode(snapshot.encode(snap, b"k"), b"k")
    assert (back.model, back.version, back.step_count, back.state_names) == (
        "m",
        3,
        12,
        ["h0", "c0"],
    )
    for a, b in zip(states, back.states, strict=True):
        np.testing.assert_array_equal(a, b)
    nan = snapshot.Snapshot("m", 3, "a" * 64, 1, ["h0"], [np.full((2, 3), np.nan, np.float32)])
    with pytest.raises(InvalidSnapshot, match="NaN"):
        snapshot.decode(snapshot.encode(nan))


@pytest.mark.parametrize("secret", [None, "restart-secret"])
async def test_stop_and_start_with_a_snapshot_dir_continues_identically(
    make_engine: Any, tiny_repository: Path, tmp_path: Path, secret: str | None
) -> None:
    settings: dict[str, Any] = {"snapshot_dir": tmp_path / "snaps", "snapshot_secret": secret}
    first = await make_engine(**settings)
    ids = {}
    for model in tm.LANGUAGE_MODELS:
        ids[model] = await twin_session(first, model, PREFIX)
    closed = await twin_session(first, tm.RNN_LM, PREFIX)
    await first.close_session(closed, ME)
    await first.stop(1.0)
    assert (tmp_path / "snaps" / snapshot.FILE_NAME).is_file()

    second = await make_engine(**settings)
    assert not (tmp_path / "snaps" / snapshot.FILE_NAME).exists()  # consumed at start
    for model, session in ids.items():
        view = await second.get_session(session, ME)  # same id, same owner
        assert view.step_count == len(PREFIX)
        rows = await feed(second, session, REST)
        whole = tm.run_whole_sequence(tiny_repository / model, np.concatenate([PREFIX, REST]))
        np.testing.assert_allclose(rows, whole["logits"][len(PREFIX) :], atol=1e-5)
    with pytest.raises(SessionNotFound):  # the restored owner, not just anyone
        await second.get_session(ids[tm.RNN_LM], "mallory")
    with pytest.raises(SessionNotFound):
        await second.get_session(closed, ME)
