"""Session state snapshots: a versioned, checksummed, optionally HMAC-signed format (no pickle).

Layout of one snapshot (all integers little-endian):

    magic      8 bytes   b"RNNSNAP\\0"
    format     u16       FORMAT_VERSION
    flags      u16       bit 0: an HMAC-SHA256 trailer follows the checksum
    header_len u32       length of the header
    header     JSON      utf-8: model, version, weights_sha256, step_count,
                         states [{name, shape, dtype}], optional session {id, identity,
                         created_at}, optional last_output {shape, dtype}
    states     bytes     each state tensor (shape without the batch axis), float32 "<f4", C order,
                         then the last output (a language model's last logits) if present
    checksum   32 bytes  SHA-256 of everything above
    hmac       32 bytes  HMAC-SHA256(secret, everything above), only when flag bit 0 is set

The shutdown file (`sessions.rnnsnap` in snapshot_dir) holds many snapshots:
    b"RNNSESS\\0", u32 format, u32 count, then per snapshot u64 length + the snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rnnserve.server.domain import FloatArray
from rnnserve.server.errors import InvalidSnapshot
from rnnserve.server.manifest import StateSpec

MAGIC = b"RNNSNAP\x00"
FORMAT_VERSION = 1
FLAG_HMAC = 1
_PREFIX = struct.Struct("<8sHHI")
_DIGEST = 32
MAX_HEADER_BYTES = 64 * 1024

FILE_MAGIC = b"RNNSESS\x00"
FILE_NAME = "sessions.rnnsnap"
_FILE_PREFIX = struct.Struct("<8sII")
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class SessionIdentity:
    """Who a session belonged to, kept only in shutdown snapshots (restored at start)."""

    session_id: str
    identity: str
    created_at: float
    sequence: str | None = None  # the client's sequence id (KServe / Triton), if it has one


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot: which model it is for, how far the session got, and its states."""

    model: str
    version: int
    weights_sha256: str
    step_count: int
    state_names: list[str]
    states: list[FloatArray]
    session: SessionIdentity | None = None
    # A language model's last logits (lets generation continue without a prompt).
    last_output: FloatArray | None = None


def encode(snapshot: Snapshot, secret: bytes | None = None) -> bytes:
    """Serialise a snapshot, signed with HMAC-SHA256 when `secret` is given."""
    header: dict[str, Any] = {
        "model": snapshot.model,
        "version": snapshot.version,
        "weights_sha256": snapshot.weights_sha256,
        "step_count": snapshot.step_count,
        "states": [
            {"name": name, "shape": list(state.shape), "dtype": "float32"}
            for name, state in zip(snapshot.state_names, snapshot.states, strict=True)
        ],
    }
    if snapshot.session is not None:
        header["session"] = {
            "id": snapshot.session.session_id,
            "identity": snapshot.session.identity,
            "created_at": snapshot.session.created_at,
        }
        if snapshot.session.sequence is not None:
            header["session"]["sequence"] = snapshot.session.sequence
    if snapshot.last_output is not None:
        header["last_output"] = {"shape": list(snapshot.last_output.shape), "dtype": "float32"}
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    flags = FLAG_HMAC if secret is not None else 0
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(header_bytes)), header_bytes]
    parts += [np.ascontiguousarray(s, dtype="<f4").tobytes() for s in snapshot.states]
    if snapshot.last_output is not None:
        parts.append(np.ascontiguousarray(snapshot.last_output, dtype="<f4").tobytes())
    body = b"".join(parts)
    body += hashlib.sha256(body).digest()
    if secret is not None:
        body += hmac.new(secret, body, hashlib.sha256).digest()
    return body


def decode(data: bytes, secret: bytes | None = None) -> Snapshot:
    """Parse and verify a snapshot; InvalidSnapshot says what is wrong with it.

    With a secret, an unsigned snapshot or a wrong signature is refused; without one, a signature
    cannot be checked and only the checksum protects against corruption.
    """
    if len(data) < _PREFIX.size + _DIGEST:
        raise InvalidSnapshot(f"snapshot is truncated ({len(data)} bytes)", field="snapshot")
    magic, version, flags, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise InvalidSnapshot("not an rnnserve snapshot (bad magic bytes)", field="snapshot")
    if version != FORMAT_VERSION:
        raise InvalidSnapshot(
            f"snapshot format version {version} is not supported (this server reads "
            f"{FORMAT_VERSION})",
            field="snapshot",
        )
    if flags & ~FLAG_HMAC:
        raise InvalidSnapshot(f"snapshot has unknown flags {flags:#x}", field="snapshot")
    signed = bool(flags & FLAG_HMAC)
    trailer = _DIGEST * (2 if signed else 1)
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len + trailer > len(data):
        raise InvalidSnapshot(
            "snapshot is truncated or its header length is corrupt", field="snapshot"
        )
    end = len(data) - trailer
    if not hmac.compare_digest(hashlib.sha256(data[:end]).digest(), data[end : end + _DIGEST]):
        raise InvalidSnapshot("snapshot is corrupted (checksum mismatch)", field="snapshot")
    if secret is not None:
        if not signed:
            raise InvalidSnapshot(
                "snapshot is not signed, and this server only accepts signed snapshots",
                field="snapshot",
            )
        expected = hmac.new(secret, data[: end + _DIGEST], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, data[end + _DIGEST :]):
            raise InvalidSnapshot(
                "snapshot signature does not match (forged, or signed with another secret)",
                field="snapshot",
            )
    start = _PREFIX.size
    header = _parse_header(data[start : start + header_len])
    return _read_states(header, data[start + header_len : end])


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidSnapshot(
            f"snapshot header is not valid JSON: {err}", field="snapshot"
        ) from err
    if not isinstance(header, dict):
        raise InvalidSnapshot("snapshot header is not an object", field="snapshot")
    expected = {
        "model": str,
        "version": int,
        "weights_sha256": str,
        "step_count": int,
        "states": list,
    }
    for key, kind in expected.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise InvalidSnapshot(
                f"snapshot header field {key!r} is missing or not a {kind.__name__}",
                field="snapshot",
            )
    if header["step_count"] < 0:
        raise InvalidSnapshot("snapshot step_count is negative", field="snapshot")
    return header


def _read_states(header: dict[str, Any], payload: bytes) -> Snapshot:
    names: list[str] = []
    states: list[FloatArray] = []
    offset = 0
    entries = list(header["states"])
    last = header.get("last_output")
    if last is not None:
        entries.append({**last, "name": "last_output"} if isinstance(last, dict) else last)
    for index, entry in enumerate(entries):
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or entry.get("dtype") != "float32"
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise InvalidSnapshot(
                f"snapshot state {index} has a malformed description", field="snapshot"
            )
        size = 4 * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(payload):
            raise InvalidSnapshot(
                "snapshot state bytes are shorter than the header says", field="snapshot"
            )
        array = np.frombuffer(payload, dtype="<f4", count=size // 4, offset=offset)
        states.append(array.reshape(shape).astype(np.float32))
        names.append(entry["name"])
        offset += size
    if offset != len(payload):
        raise InvalidSnapshot("snapshot has trailing bytes after its states", field="snapshot")
    for name, state in zip(names, states, strict=True):
        if not np.isfinite(state).all():
            raise InvalidSnapshot(
                f"snapshot state {name!r} holds NaN or infinity", field="snapshot"
            )
    last_output = None
    if last is not None:
        names.pop()
        last_output = states.pop()
    session = None
    raw_session = header.get("session")
    if isinstance(raw_session, dict):
        try:
            session = SessionIdentity(
                session_id=str(raw_session["id"]),
                identity=str(raw_session["identity"]),
                created_at=float(raw_session["created_at"]),
                sequence=_optional_text(raw_session.get("sequence")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidSnapshot("snapshot session record is malformed", field="snapshot") from err
    return Snapshot(
        model=header["model"],
        version=header["version"],
        weights_sha256=header["weights_sha256"],
        step_count=header["step_count"],
        state_names=names,
        states=states,
        session=session,
        last_output=last_output,
    )


def _optional_text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidSnapshot("snapshot session record is malformed", field="snapshot")
    return value


def check_matches(
    snapshot: Snapshot, model: str, version: int, weights_sha256: str, specs: list[StateSpec]
) -> None:
    """Refuse a snapshot taken on another model, version, or weights, or with other state shapes."""
    if snapshot.model != model or snapshot.version != version:
        raise InvalidSnapshot(
            f"snapshot is for model {snapshot.model!r} version {snapshot.version}, not "
            f"{model!r} version {version}",
            field="snapshot",
        )
    if snapshot.weights_sha256 != weights_sha256:
        raise InvalidSnapshot(
            f"snapshot was taken with other weights of {model!r} version {version} (weights "
            f"sha256 {snapshot.weights_sha256[:12]}..., served {weights_sha256[:12]}...)",
            field="snapshot",
        )
    want = [(s.input_name, list(s.shape)) for s in specs]
    have = [(n, list(a.shape)) for n, a in zip(snapshot.state_names, snapshot.states, strict=True)]
    if want != have:
        raise InvalidSnapshot(
            f"snapshot states {have} do not match the model's {want}", field="snapshot"
        )


def write_file(path: Path, snapshots: Iterable[bytes]) -> int:
    """Write many encoded snapshots to one file atomically (temp file + rename); returns count."""
    items = list(snapshots)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(_FILE_PREFIX.pack(FILE_MAGIC, FORMAT_VERSION, len(items)))
        for item in items:
            handle.write(_LENGTH.pack(len(item)))
            handle.write(item)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return len(items)


def read_file(path: Path) -> list[bytes]:
    """The encoded snapshots in a file written by `write_file` (each still to be decoded)."""
    data = path.read_bytes()
    if len(data) < _FILE_PREFIX.size:
        raise InvalidSnapshot(f"{path} is truncated", field="snapshot_dir")
    magic, version, count = _FILE_PREFIX.unpack_from(data)
    if magic != FILE_MAGIC or version != FORMAT_VERSION:
        raise InvalidSnapshot(f"{path} is not an rnnserve sessions file", field="snapshot_dir")
    items, offset = [], _FILE_PREFIX.size
    for _ in range(count):
        if offset + _LENGTH.size > len(data):
            raise InvalidSnapshot(f"{path} is truncated", field="snapshot_dir")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise InvalidSnapshot(f"{path} is truncated", field="snapshot_dir")
        items.append(data[offset : offset + length])
        offset += length
    return items
