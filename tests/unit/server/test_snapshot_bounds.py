"""Forged snapshot headers are refused at import (InvalidSnapshot), never accepted to fail later.

A forger can always recompute the checksum (only a secret stops them), so every case below
carries a valid checksum: what refuses it is the header check itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
from helpers_core import ME, tokens
from rnnserve.server import snapshot
from rnnserve.server.domain import OutputOptions
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidSnapshot

SHA = "ab" * 32
STATE = np.arange(6, dtype=np.float32).reshape(2, 3)


def forge(
    header: Any,
    payload: bytes,
    *,
    raw: bytes | None = None,
    secret: bytes | None = None,
    version: int = snapshot.FORMAT_VERSION,
    flags: int | None = None,
) -> bytes:
    """A snapshot with any header and payload, and a correct checksum (and signature)."""
    header_bytes = raw if raw is not None else json.dumps(header).encode()
    if flags is None:
        flags = snapshot.FLAG_HMAC if secret is not None else 0
    body = struct.pack("<8sHHI", snapshot.MAGIC, version, flags, len(header_bytes))
    body += header_bytes + payload
    body += hashlib.sha256(body).digest()
    if secret is not None:
        body += hmac.new(secret, body, hashlib.sha256).digest()
    return body


def good_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "model": "tiny-lstm-lm",
        "version": 1,
        "weights_sha256": SHA,
        "step_count": 7,
        "states": [{"name": "h0", "shape": [2, 3], "dtype": "float32"}],
    }
    header.update(changes)
    return header


def refused(data: bytes, match: str, secret: bytes | None = None) -> InvalidSnapshot:
    with pytest.raises(InvalidSnapshot, match=match) as caught:
        snapshot.decode(data, secret)
    assert caught.value.field == "snapshot"
    return caught.value


PAYLOAD = STATE.astype("<f4").tobytes()


def test_the_forging_helper_makes_snapshots_decode_accepts() -> None:
    decoded = snapshot.decode(forge(good_header(), PAYLOAD))
    assert (decoded.model, decoded.version, decoded.step_count) == ("tiny-lstm-lm", 1, 7)
    np.testing.assert_array_equal(decoded.states[0], STATE)


@pytest.mark.parametrize("count", [-1, 2**53 + 1, 2**63, 2**70, 1.5, True, "7", None])
def test_step_count_out_of_range_or_not_an_integer(count: Any) -> None:
    refused(forge(good_header(step_count=count), PAYLOAD), "step_count")


def test_a_step_count_of_thousands_of_digits() -> None:
    raw = json.dumps(good_header()).replace('"step_count": 7', '"step_count": ' + "9" * 5000)
    refused(forge(None, PAYLOAD, raw=raw.encode()), "not valid JSON")


@pytest.mark.parametrize("depth", [5, 50, 20_000])
def test_deep_nesting(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    raw = json.dumps(good_header(model="PLACEHOLDER")).replace('"PLACEHOLDER"', nested)
    assert len(raw) <= snapshot.MAX_HEADER_BYTES
    refused(forge(None, PAYLOAD, raw=raw.encode()), "nested too deeply|model")


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ([2**31 - 1] * 8, "differ from what its header describes"),  # product overflows int64
        ([2**32, 2**32], "shape"),
        ([-1, 6], "shape"),
        ([0, 6], "shape"),
        ([], "dimensions"),
        ([1] * 9, "dimensions"),
        ([2.0, 3], "shape"),
        ([True, 3], "shape"),
        ("2x3", "dimensions"),
    ],
)
def test_bad_shapes(shape: Any, match: str) -> None:
    states = [{"name": "h0", "shape": shape, "dtype": "float32"}]
    refused(forge(good_header(states=states), PAYLOAD), match)


@pytest.mark.parametrize("dtype", ["float64", "<f4", "object", "O", None, 32])
def test_dtype_outside_the_allow_list(dtype: Any) -> None:
    states = [{"name": "h0", "shape": [2, 3], "dtype": dtype}]
    refused(forge(good_header(states=states), PAYLOAD), "dtype")


@pytest.mark.parametrize("payload", [PAYLOAD[:-4], PAYLOAD + b"\0" * 4, b""])
def test_state_bytes_that_do_not_match_the_header(payload: bytes) -> None:
    refused(forge(good_header(), payload), "differ from what its header describes")


def test_truncated_files_and_header_lengths() -> None:
    data = forge(good_header(), PAYLOAD)
    for cut in (10, 30, len(data) - 1):
        refused(data[:cut], "truncated|checksum")
    # a header length pointing past the end
    longer = bytearray(data)
    struct.pack_into("<I", longer, 12, 2**31)
    refused(bytes(longer), "truncated or its header length is corrupt")


def test_too_many_states_and_bad_state_names() -> None:
    many = [{"name": f"s{i}", "shape": [1], "dtype": "float32"} for i in range(65)]
    refused(forge(good_header(states=many), b"\0\0\0\0" * 65), "1 to 64 states")
    refused(forge(good_header(states=[]), b""), "1 to 64 states")
    for name in ("", "a\nb", "x" * 300, 5):
        states = [{"name": name, "shape": [2, 3], "dtype": "float32"}]
        refused(forge(good_header(states=states), PAYLOAD), "name")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": "Tiny LM\n[forged log line]"}, "model"),
        ({"model": "m" * 65}, "model"),
        ({"model": ""}, "model"),
        ({"version": 0}, "version"),
        ({"version": 2**31}, "version"),
        ({"weights_sha256": "not-hex"}, "weights_sha256"),
        ({"weights_sha256": "AB" * 32}, "weights_sha256"),
        ({"extra": 1}, "unknown fields"),
        ({"last_output": {"shape": [20], "dtype": "float64"}}, "dtype"),
        ({"last_output": [20]}, "not an object"),
    ],
)
def test_header_fields_out_of_bounds(changes: dict[str, Any], match: str) -> None:
    refused(forge(good_header(**changes), PAYLOAD), match)


def test_missing_fields_duplicate_keys_and_non_numbers() -> None:
    header = good_header()
    del header["step_count"]
    refused(forge(header, PAYLOAD), "lacks")
    raw = json.dumps(good_header()).replace('"version": 1', '"version": 1, "version": 2')
    refused(forge(None, PAYLOAD, raw=raw.encode()), "twice")
    raw = json.dumps(good_header()).replace('"step_count": 7', '"step_count": NaN')
    refused(forge(None, PAYLOAD, raw=raw.encode()), "not a number")
    refused(forge(None, PAYLOAD, raw=b"\xff\xfe"), "not UTF-8")
    refused(forge(None, PAYLOAD, raw=b"[1, 2]"), "not an object")


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"id": "abc\ndef", "identity": "alice", "created_at": 1.0}, "id"),
        ({"id": "a" * 129, "identity": "alice", "created_at": 1.0}, "id"),
        ({"id": "abc", "identity": "x" * 2000, "created_at": 1.0}, "identity"),
        ({"id": "abc", "identity": 42, "created_at": 1.0}, "identity"),
        ({"id": "abc", "identity": "", "created_at": 1.0}, "identity"),
        ({"id": "abc", "identity": "alice", "created_at": -5}, "created_at"),
        ({"id": "abc", "identity": "alice", "created_at": 1e300}, "created_at"),
        ({"id": "abc", "identity": "alice", "created_at": True}, "created_at"),
        ({"id": "abc", "identity": "alice", "created_at": 1.0, "sequence": ["x"]}, "sequence"),
        ({"id": "abc", "identity": "alice"}, "lacks"),
        ("abc", "not an object"),
    ],
)
def test_session_records_out_of_bounds(record: Any, match: str) -> None:
    refused(forge(good_header(session=record), PAYLOAD), match)


def test_format_version_and_flags() -> None:
    err = refused(forge(good_header(), PAYLOAD, version=2), "format version 2")
    assert err.reason == "format"
    refused(forge(good_header(), PAYLOAD, flags=4), "unknown flags")


def test_reasons_tell_signature_from_corruption() -> None:
    signed = forge(good_header(), PAYLOAD, secret=b"right")
    assert refused(signed, "does not match", secret=b"wrong").reason == "signature"
    assert refused(forge(good_header(), PAYLOAD), "not signed", secret=b"right").reason == (
        "signature"
    )
    assert refused(forge(good_header(step_count=-1), PAYLOAD), "step_count").reason == "corrupt"


# ---- through the engine: refused at import, and a bound value works in use ----------------------


async def _real_header(engine: InferenceEngine) -> tuple[dict[str, Any], bytes]:
    view = await engine.create_session(tm.LSTM_LM, 0, ME)
    await engine.step(view.session_id, ME, tokens(1, 3), OutputOptions())
    data, _ = await engine.export_state(view.session_id, ME)
    (header_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16 : 16 + header_len])
    payload = data[16 + header_len : len(data) - 32]
    return header, payload


async def test_forged_headers_are_refused_by_import_and_nothing_is_created(
    engine: InferenceEngine,
) -> None:
    header, payload = await _real_header(engine)
    before = len(engine.sessions)
    forged = [
        forge({**header, "step_count": 2**62}, payload),
        forge({**header, "states": [{**header["states"][0], "shape": [2**31 - 1] * 8}]}, payload),
        forge({**header, "last_output": {"shape": [-20], "dtype": "float32"}}, payload),
    ]
    for data in forged:
        with pytest.raises(InvalidSnapshot):
            await engine.import_state(data, ME)
    assert len(engine.sessions) == before


async def test_a_step_count_at_the_bound_imports_and_keeps_counting(
    engine: InferenceEngine, tiny_repository: Path
) -> None:
    header, payload = await _real_header(engine)
    view = await engine.import_state(
        forge({**header, "step_count": snapshot.MAX_STEP_COUNT}, payload), ME
    )
    assert view.step_count == snapshot.MAX_STEP_COUNT
    outcome = await engine.step(view.session_id, ME, tokens(2, 4), OutputOptions())
    assert outcome.step_count == snapshot.MAX_STEP_COUNT + 4
