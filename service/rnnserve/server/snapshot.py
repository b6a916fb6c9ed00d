"""Session state snapshots: a versioned, checksummed, optionally HMAC-signed format (no pickle).

Layout of one snapshot (all integers little-endian):

    magic      8 bytes   b"RNNSNAP\\0"
    format     u16       FORMAT_VERSION
    flags      u16       bit 0: an HMAC-SHA256 trailer follows the checksum
    header_len u32       length of the header
    header     JSON      utf-8: model, version, weights_sha256, step_count,
                         states [{name, shape, dtype}], optional session {id, identity,
                         created_at, sequence?}, optional last_output {shape, dtype}
    states     bytes     each state tensor (shape without the batch axis), float32 "<f4", C order,
                         then the last output (a language model's last logits) if present
    checksum   32 bytes  SHA-256 of everything above
    hmac       32 bytes  HMAC-SHA256(secret, everything above), only when flag bit 0 is set

The shutdown file (`sessions.rnnsnap` in snapshot_dir) holds many snapshots:
    b"RNNSESS\\0", u32 format, u32 count, then per snapshot u64 length + the snapshot.

`decode` trusts nothing in the header: every field is checked against an exact schema and its
bounds (MAX_* below) before anything is allocated or stored from it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
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


class RecordEncoder:
    """Encodes snapshots of one session fast, byte for byte what `encode` makes.

    Everything in a session's header but its step count is fixed for its life, so the header's
    JSON is made once, split around the step count, and each encoding only joins bytes: the
    state tier encodes every session of every batch.
    """

    _MARK = b',"step_count":0,'

    def __init__(self, template: Snapshot, secret: bytes | None) -> None:
        header = encode(
            Snapshot(**{**template.__dict__, "step_count": 0}), None
        )  # a whole snapshot, of which only the header is kept
        _, _, _, header_len = _PREFIX.unpack_from(header)
        raw = header[_PREFIX.size : _PREFIX.size + header_len]
        # Keys are sorted and every string value is escaped, so the mark occurs exactly once.
        before, mark, after = raw.partition(self._MARK)
        if not mark:
            raise ValueError("snapshot header without a step count")
        self._before = before + b',"step_count":'
        self._after = b"," + after
        self._secret = secret
        self._flags = FLAG_HMAC if secret is not None else 0
        # the header lists a last output or not: a session that gains one needs a new encoder
        self.has_last_output = template.last_output is not None

    def encode(
        self, step_count: int, states: Iterable[FloatArray], last_output: FloatArray | None
    ) -> bytes:
        """The session's snapshot at `step_count` with these states (views are fine)."""
        header = b"%s%d%s" % (self._before, step_count, self._after)
        parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, self._flags, len(header)), header]
        parts += [np.asarray(state, dtype="<f4").tobytes() for state in states]
        if last_output is not None:
            parts.append(np.asarray(last_output, dtype="<f4").tobytes())
        body = b"".join(parts)
        body += hashlib.sha256(body).digest()
        if self._secret is not None:
            body += hmac.new(self._secret, body, hashlib.sha256).digest()
        return body


def decode(data: bytes, secret: bytes | None = None) -> Snapshot:
    """Parse and verify a snapshot; InvalidSnapshot says what is wrong with it (and its `reason`).

    With a secret, an unsigned snapshot or a wrong signature is refused; without one, a signature
    cannot be checked and only the checksum protects against corruption. Either way every header
    field is checked against its bounds before anything is allocated from it, so a forged header
    is refused here and never reaches the session it would have broken.
    """
    if len(data) < _PREFIX.size + _DIGEST:
        raise _invalid(f"snapshot is truncated ({len(data)} bytes)")
    magic, version, flags, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _invalid("not an rnnserve snapshot (bad magic bytes)", "format")
    if version != FORMAT_VERSION:
        raise _invalid(
            f"snapshot format version {version} is not supported (this server reads "
            f"{FORMAT_VERSION})",
            "format",
        )
    if flags & ~FLAG_HMAC:
        raise _invalid(f"snapshot has unknown flags {flags:#x}", "format")
    signed = bool(flags & FLAG_HMAC)
    trailer = _DIGEST * (2 if signed else 1)
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len + trailer > len(data):
        raise _invalid("snapshot is truncated or its header length is corrupt")
    end = len(data) - trailer
    if not hmac.compare_digest(hashlib.sha256(data[:end]).digest(), data[end : end + _DIGEST]):
        raise _invalid("snapshot is corrupted (checksum mismatch)")
    if secret is not None:
        if not signed:
            raise _invalid(
                "snapshot is not signed, and this server only accepts signed snapshots",
                "signature",
            )
        expected = hmac.new(secret, data[: end + _DIGEST], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, data[end + _DIGEST :]):
            raise _invalid(
                "snapshot signature does not match (forged, or signed with another secret)",
                "signature",
            )
    start = _PREFIX.size
    header = _parse_header(data[start : start + header_len])
    return _read_states(header, memoryview(data)[start + header_len : end])


# ---- header checks: every field bounded before use ----------------------------------------------

# Bounds of the header's fields. Generous for any real session, small enough that nothing derived
# from a forged header (an allocation, an int64 step counter, a log line) can go wrong.
MAX_STEP_COUNT = 2**53  # exact as a float; 285 years at a million steps a second
MAX_VERSION = 2**31 - 1
MAX_STATES = 64
MAX_RANK = 8
MAX_NAME_LENGTH = 256  # state (ONNX tensor) names
MAX_IDENTITY_LENGTH = 1024  # a saved session's owner and sequence id
MAX_CREATED_AT = 253_402_300_800.0  # year 10000, seconds since the epoch
DTYPES = frozenset({"float32"})
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # the manifest's rule for model names
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # server-made ids are URL-safe base64


@dataclass(frozen=True)
class _TensorEntry:
    """One tensor the payload holds: its name and shape, checked against the bounds."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # Python ints: a forged shape cannot overflow


@dataclass(frozen=True)
class _Header:
    model: str
    version: int
    weights_sha256: str
    step_count: int
    states: list[_TensorEntry]
    last_output: _TensorEntry | None
    session: SessionIdentity | None


def _invalid(message: str, reason: str = "corrupt") -> InvalidSnapshot:
    return InvalidSnapshot(message, field="snapshot", reason=reason)


def _parse_header(raw: bytes) -> _Header:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("snapshot header is not UTF-8") from None
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except ValueError as err:  # JSONDecodeError, a duplicate key, NaN, an int of 5,000 digits
        raise _invalid(f"snapshot header is not valid JSON: {str(err)[:120]}") from None
    except RecursionError:
        # The parser's own depth guard; the schema below allows four levels.
        raise _invalid("snapshot header is nested too deeply") from None
    fields = _object(
        header,
        "header",
        required={"model", "version", "weights_sha256", "step_count", "states"},
        optional={"session", "last_output"},
    )
    model = fields["model"]
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise _invalid("snapshot header field 'model' is not a model name")
    weights = fields["weights_sha256"]
    if not isinstance(weights, str) or not _SHA256.fullmatch(weights):
        raise _invalid("snapshot header field 'weights_sha256' is not a sha256 hex digest")
    states = fields["states"]
    if not isinstance(states, list) or not 1 <= len(states) <= MAX_STATES:
        raise _invalid(f"snapshot header field 'states' must list 1 to {MAX_STATES} states")
    last = fields.get("last_output")
    return _Header(
        model=model,
        version=_integer(fields["version"], "version", 1, MAX_VERSION),
        weights_sha256=weights,
        step_count=_integer(fields["step_count"], "step_count", 0, MAX_STEP_COUNT),
        states=[_tensor(entry, f"states[{i}]", named=True) for i, entry in enumerate(states)],
        last_output=None if last is None else _tensor(last, "last_output", named=False),
        session=None if fields.get("session") is None else _session(fields["session"]),
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _object(
    value: Any, where: str, *, required: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """`value` as an object holding every required key and nothing unknown."""
    if not isinstance(value, dict):
        raise _invalid(f"snapshot {where} is not an object")
    missing = sorted(required - value.keys())
    unknown = sorted(value.keys() - required - optional)
    if missing or unknown:
        what = f"lacks {missing}" if missing else f"has unknown fields {unknown[:4]}"
        raise _invalid(f"snapshot {where} {what}"[:200])
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(f"snapshot header field {where!r} must be an integer in [{low}, {high}]")
    return value


def _text(value: Any, where: str, limit: int, *, printable: bool = True) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= limit
        or (printable and not value.isprintable())
    ):
        kind = "printable text" if printable else "text"
        raise _invalid(f"snapshot {where} must be {kind} of 1 to {limit} characters")
    return value


def _tensor(value: Any, where: str, *, named: bool) -> _TensorEntry:
    keys = {"name", "shape", "dtype"} if named else {"shape", "dtype"}
    fields = _object(value, where, required=keys)
    if fields["dtype"] not in DTYPES:
        raise _invalid(f"snapshot {where}.dtype must be one of {sorted(DTYPES)}")
    shape = fields["shape"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK:
        raise _invalid(f"snapshot {where}.shape must have 1 to {MAX_RANK} dimensions")
    dims = tuple(_integer(d, f"{where}.shape", 1, 2**31 - 1) for d in shape)
    name = _text(fields["name"], f"{where}.name", MAX_NAME_LENGTH) if named else "last_output"
    return _TensorEntry(name, dims)


def _session(value: Any) -> SessionIdentity:
    fields = _object(
        value, "session record", required={"id", "identity", "created_at"}, optional={"sequence"}
    )
    session_id = fields["id"]
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise _invalid("snapshot session record's id is not a session id")
    created = fields["created_at"]
    if (
        not isinstance(created, (int, float))
        or isinstance(created, bool)
        or not 0 <= created <= MAX_CREATED_AT
    ):
        raise _invalid("snapshot session record's created_at is not a time")
    sequence = fields.get("sequence")
    # The owner and a KServe sequence id are whatever the server accepted from the caller: only
    # their length is bounded here (a saved session must not become unrestorable).
    return SessionIdentity(
        session_id=session_id,
        identity=_text(
            fields["identity"], "session record's identity", MAX_IDENTITY_LENGTH, printable=False
        ),
        created_at=float(created),
        sequence=None
        if sequence is None
        else _text(sequence, "session record's sequence", MAX_IDENTITY_LENGTH, printable=False),
    )


def _read_states(header: _Header, payload: memoryview) -> Snapshot:
    entries = [*header.states, *([header.last_output] if header.last_output else [])]
    # Sizes come from bounded ints and are compared with the bytes actually present before
    # anything is read: a shape whose product overflows int64 is just "too large" here.
    expected = 4 * sum(entry.size for entry in entries)
    if expected != len(payload):
        raise _invalid(
            f"snapshot state bytes ({len(payload)}) differ from what its header describes "
            f"({expected if expected < 2**63 else 'more than 2**63'})"
        )
    arrays: list[FloatArray] = []
    offset = 0
    for entry in entries:
        count = entry.size
        array = np.frombuffer(payload, dtype="<f4", count=count, offset=offset)
        if not np.isfinite(array).all():
            raise _invalid(f"snapshot state {entry.name!r} holds NaN or infinity")
        arrays.append(array.reshape(entry.shape).astype(np.float32))
        offset += 4 * count
    last_output = arrays.pop() if header.last_output else None
    return Snapshot(
        model=header.model,
        version=header.version,
        weights_sha256=header.weights_sha256,
        step_count=header.step_count,
        state_names=[entry.name for entry in header.states],
        states=arrays,
        session=header.session,
        last_output=last_output,
    )


def check_matches(
    snapshot: Snapshot, model: str, version: int, weights_sha256: str, specs: list[StateSpec]
) -> None:
    """Refuse a snapshot taken on another model, version, or weights, or with other state shapes."""
    if snapshot.model != model or snapshot.version != version:
        raise InvalidSnapshot(
            f"snapshot is for model {snapshot.model!r} version {snapshot.version}, not "
            f"{model!r} version {version}",
            field="snapshot",
            reason="model",
        )
    if snapshot.weights_sha256 != weights_sha256:
        raise InvalidSnapshot(
            f"snapshot was taken with other weights of {model!r} version {version} (weights "
            f"sha256 {snapshot.weights_sha256[:12]}..., served {weights_sha256[:12]}...)",
            field="snapshot",
            reason="model",
        )
    want = [(s.input_name, list(s.shape)) for s in specs]
    have = [(n, list(a.shape)) for n, a in zip(snapshot.state_names, snapshot.states, strict=True)]
    if want != have:
        raise InvalidSnapshot(
            f"snapshot states {have} do not match the model's {want}"[:400],
            field="snapshot",
            reason="model",
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
