"""Hypothesis strategies for request fuzzing: structured mutations of valid protobuf requests.

Pure (no network): a `Seed` is a valid request of one method; a strategy turns seeds into
`Case`s, the bytes to send. Three kinds of case, each its own strategy:

- ``field_cases``: field-level mutations found through the message descriptors: a random value of
  the field's type (boundary integers, NaN/Inf, unknown enum numbers, empty/huge/control-character
  strings, empty or long repeated fields, new map entries), a dropped field, an emptied or
  switched oneof; the result still parses.
- ``wire_cases``: mutations of the encoded bytes: bit flips, truncation, inserted bytes, a field
  encoded twice, unknown fields, invalid UTF-8 in a string field, deeply nested groups; most of
  these no longer parse.
- ``random_cases``: random bytes for any method.

Shared by tests/integration/test_fuzz.py (bounded) and bench/fuzz.py (the long run).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 6  # nested messages a mutation may reach into
NOTE_CHARS = 60  # a value's repr is shortened to this in a case's note

# Strings that reach deep code paths or abuse it: names that exist, parameters the servers read,
# datatypes (KServe), ids, control characters, path tricks, numbers int() misreads, long text.
COMMON_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "0",
    "-1",
    "1",
    "latest",
    "all",
    "last",
    "abc",
    "a\nb",
    "line\r\nFORGED 00:00:00 INFO injected",
    "\x00",
    "\x1b[31m",
    "../../etc/passwd",
    "%s%n%x",
    "é漢字🙂",
    "\u202e",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "output_steps",
    "rnnserve_session_id",
    "step_count",
    "INT64",
    "FP32",
    "FP64",
    "FP16",
    "BF16",
    "INT8",
    "UINT64",
    "BOOL",
    "BYTES",
    "int64",
    "tokens",
    "features",
    "logits",
    "value",
    "²",
    "١٢",
    "1e3",
    "0x10",
    "9" * 5_000,
    "x" * 300,
    "y" * 5_000,
    "z" * 70_000,
)
INT64_EDGES = (
    0,
    1,
    -1,
    2,
    7,
    255,
    256,
    4096,
    4097,
    2**31 - 1,
    -(2**31),
    2**62,
    2**63 - 1,
    -(2**63),
)
UINT64_EDGES = (0, 1, 2, 4096, 4097, 2**31, 2**32 - 1, 2**62, 2**64 - 1)
FLOAT_EDGES = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 3.4e38, -3.4e38, math.inf, -math.inf, math.nan)
# Deeply nested groups (start-group tags of field 1): the parser's nesting limit.
DEEP_GROUPS = b"\x0b" * 300 + b"\x0c" * 300


@dataclass(frozen=True)
class Seed:
    """A valid request of one method (`target`, "package.Service/Method")."""

    target: str
    message: Message
    name: str  # says which seed, in a case's note
    stream_key: str = ""  # which long-lived stream a stream message goes on (its model)
    fresh_stream: bool = False  # a stream's first message (open): sent on a new stream


@dataclass(frozen=True)
class Case:
    """One request to send: `body` to method `target`, made as `note` says."""

    target: str
    body: bytes
    note: str
    stream_key: str = ""
    fresh_stream: bool = False

    def reproducer(self) -> str:
        """How to send this case again: its method, its bytes and how they were made."""
        return f"{self.target} body={self.body.hex()} ({self.note})"


def field_cases(seeds: Sequence[Seed], strings: Sequence[str]) -> st.SearchStrategy[Case]:
    """Cases made by 1-3 field-level mutations of a seed (they still parse)."""
    pool = tuple(dict.fromkeys((*COMMON_STRINGS, *strings)))

    chosen = _seed_of_any_method(seeds)

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        seed = draw(chosen)
        message = _copy(seed.message)
        notes = [seed.name]
        for _ in range(draw(st.integers(1, 3))):
            _mutate_field(draw, message, pool, notes)
        return _case(seed, message.SerializeToString(), notes)

    return build()


def wire_cases(seeds: Sequence[Seed], strings: Sequence[str]) -> st.SearchStrategy[Case]:
    """Cases made by 1-3 mutations of a seed's encoded bytes (after maybe one field mutation)."""
    pool = tuple(dict.fromkeys((*COMMON_STRINGS, *strings)))

    chosen = _seed_of_any_method(seeds)

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        seed = draw(chosen)
        message = _copy(seed.message)
        notes = [seed.name]
        if draw(st.booleans()):
            _mutate_field(draw, message, pool, notes)
        body = message.SerializeToString()
        for _ in range(draw(st.integers(1, 3))):
            mutation = draw(st.sampled_from(_WIRE_MUTATIONS))
            body = mutation(draw, body, message, notes)
        return _case(seed, body, notes)

    return build()


def random_cases(seeds: Sequence[Seed]) -> st.SearchStrategy[Case]:
    """Random bytes (or a few known-bad blobs) for any method the seeds cover."""
    targets = sorted({(s.target, s.stream_key) for s in seeds})  # each stream's model too
    blobs = st.one_of(
        st.binary(max_size=512),
        st.sampled_from([b"", b"\x00", b"\xff" * 64, DEEP_GROUPS, b"\x0a\xff\xff\xff\xff\x0f"]),
    )

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        target, key = draw(st.sampled_from(targets))
        body = draw(blobs)
        fresh = draw(st.booleans())
        return Case(target, body, f"random {len(body)} bytes", key, fresh)

    return build()


def _seed_of_any_method(seeds: Sequence[Seed]) -> st.SearchStrategy[Seed]:
    """A method, then one of its seeds: every method gets its share, however many seeds it has."""
    by_target: dict[str, list[Seed]] = {}
    for seed in seeds:
        by_target.setdefault(seed.target, []).append(seed)
    return st.sampled_from(sorted(by_target)).flatmap(lambda t: st.sampled_from(by_target[t]))


def _case(seed: Seed, body: bytes, notes: list[str]) -> Case:
    return Case(seed.target, body, "; ".join(notes), seed.stream_key, seed.fresh_stream)


def _copy(message: Message) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= NOTE_CHARS else f"{text[:NOTE_CHARS]}...({len(text)} chars)"


# ---- field-level mutations ------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One field of one (possibly nested) message, with its path from the request."""

    owner: Message
    field: Any  # a FieldDescriptor (upb's own class at run time)
    path: str


def _slots(message: Message, prefix: str = "", depth: int = 0) -> list[_Slot]:
    """Every field of `message` and of the sub-messages it holds, set or not."""
    slots: list[_Slot] = []
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}{field.name}"
        slots.append(_Slot(message, field, path))
        if field.message_type is None or depth >= MAX_DEPTH or _is_map(field):
            continue
        if field.is_repeated:
            for index, item in enumerate(getattr(message, field.name)):
                slots.extend(_slots(item, f"{path}[{index}].", depth + 1))
        elif message.HasField(field.name):
            slots.extend(_slots(getattr(message, field.name), f"{path}.", depth + 1))
    return slots


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _mutate_field(
    draw: st.DrawFn, message: Message, strings: Sequence[str], notes: list[str]
) -> None:
    slots = _slots(message)
    if not slots:  # a message without fields (ListModelsRequest): only its bytes can vary
        return
    slot = draw(st.sampled_from(slots))
    owner, field, name = slot.owner, slot.field, slot.field.name
    action = draw(st.sampled_from(("set", "set", "set", "clear", "oneof")))
    oneof = field.containing_oneof
    if action == "clear":
        owner.ClearField(name)
        notes.append(f"drop {slot.path}")
    elif action == "oneof" and oneof is not None and len(oneof.fields) > 1:
        if draw(st.booleans()):
            owner.ClearField(oneof.name)
            notes.append(f"unset oneof {oneof.name} at {slot.path}")
        else:
            other = draw(st.sampled_from(list(oneof.fields)))
            _set(draw, owner, other, strings, notes, slot.path.rsplit(name, 1)[0] + other.name)
    else:
        _set(draw, owner, field, strings, notes, slot.path)


def _set(
    draw: st.DrawFn,
    owner: Message,
    field: FieldDescriptor,
    strings: Sequence[str],
    notes: list[str],
    path: str,
) -> None:
    name = field.name
    if _is_map(field):
        entries = getattr(owner, name)
        entry_type = field.message_type
        assert entry_type is not None  # _is_map
        key = draw(_scalar(entry_type.fields_by_name["key"], strings))
        value_field = entry_type.fields_by_name["value"]
        if value_field.message_type is not None:
            entry = entries[key]
            inner = draw(st.sampled_from(list(value_field.message_type.fields)))
            _set(draw, entry, inner, strings, notes, f"{path}[{key!r}].{inner.name}")
        else:
            entries[key] = draw(_scalar(value_field, strings))
            notes.append(f"{path}[{_short(key)}] = {_short(entries[key])}")
    elif field.is_repeated and field.message_type is not None:
        items = getattr(owner, name)
        choice = draw(st.sampled_from(("add", "duplicate", "many", "empty")))
        if choice == "add" or (choice == "duplicate" and not items):
            items.add()
        elif choice == "duplicate":
            items.add().CopyFrom(items[draw(st.integers(0, len(items) - 1))])
        elif choice == "many":
            for _ in range(draw(st.sampled_from((16, 300, 3000)))):
                items.add()
        else:
            del items[:]
        notes.append(f"{path}: {choice} ({len(items)} items)")
    elif field.is_repeated:
        values = draw(_repeated(field, strings))
        items = getattr(owner, name)
        del items[:]
        items.extend(values)
        notes.append(f"{path} = {len(values)} values {_short(values[:4])}")
    elif field.message_type is not None:
        getattr(owner, name).SetInParent()
        if not field.message_type.fields or draw(st.booleans()):
            getattr(owner, name).Clear()  # present but empty
            notes.append(f"{path} = empty message")
        else:
            inner = draw(st.sampled_from(list(field.message_type.fields)))
            _set(draw, getattr(owner, name), inner, strings, notes, f"{path}.{inner.name}")
    else:
        value = draw(_scalar(field, strings))
        setattr(owner, name, value)
        notes.append(f"{path} = {_short(value)}")


def _repeated(field: FieldDescriptor, strings: Sequence[str]) -> st.SearchStrategy[list[Any]]:
    scalar = _scalar(field, strings)
    # Long lists repeat one short value (a long string repeated 5,000 times would be 350 MB).
    short = {_T.TYPE_STRING: st.text(max_size=8), _T.TYPE_BYTES: st.binary(max_size=8)}
    return st.one_of(
        st.lists(scalar, max_size=8),
        st.builds(
            lambda value, count: [value] * count,
            short.get(field.type, scalar),
            st.sampled_from((300, 5000)),
        ),
    )


_T = FieldDescriptor


def _scalar(field: FieldDescriptor, strings: Sequence[str]) -> st.SearchStrategy[Any]:
    """A random value of a scalar field's type, boundary values weighted in."""
    kind = field.type
    if kind in (_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64):
        return _edged(INT64_EDGES, st.integers(-(2**63), 2**63 - 1))
    if kind in (_T.TYPE_UINT64, _T.TYPE_FIXED64):
        return _edged(UINT64_EDGES, st.integers(0, 2**64 - 1))
    if kind in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32):
        return _edged((0, 1, -1, 2**31 - 1, -(2**31)), st.integers(-(2**31), 2**31 - 1))
    if kind in (_T.TYPE_UINT32, _T.TYPE_FIXED32):
        return _edged((0, 1, 2, 4096, 4097, 2**31, 2**32 - 1), st.integers(0, 2**32 - 1))
    if kind == _T.TYPE_FLOAT:
        return _edged(FLOAT_EDGES, st.floats(width=32))
    if kind == _T.TYPE_DOUBLE:
        return _edged((*FLOAT_EDGES, 1e308), st.floats())
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind == _T.TYPE_ENUM:
        assert field.enum_type is not None
        known = [value.number for value in field.enum_type.values]
        # proto3 enums are open: an unknown number parses and reaches the server as is
        return _edged(tuple(known), st.integers(-(2**31), 2**31 - 1))
    if kind == _T.TYPE_STRING:
        return st.one_of(st.sampled_from(strings), st.text(max_size=40))
    if kind == _T.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 100_000, DEEP_GROUPS])
        )
    raise AssertionError(f"no strategy for field type {kind} ({field.full_name})")


def _edged(edges: tuple[Any, ...], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(edges), anything)


# ---- wire-level mutations -------------------------------------------------------------------

WireMutation = Callable[[st.DrawFn, bytes, Message, list[str]], bytes]


def _flip(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    if not body:
        return _insert(draw, body, message, notes)
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] ^= draw(st.integers(1, 255))
        notes.append(f"flip byte {index}")
    return bytes(data)


def _truncate(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    if not body:
        return body
    end = draw(st.integers(0, len(body) - 1))
    notes.append(f"truncate to {end} of {len(body)} bytes")
    return body[:end]


def _insert(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    at = draw(st.integers(0, len(body)))
    extra = draw(st.binary(min_size=1, max_size=16))
    notes.append(f"insert {extra.hex()} at {at}")
    return body[:at] + extra + body[at:]


def _duplicate_field(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    """Encode one of the set fields a second time (a parser merges or keeps the last)."""
    present = message.ListFields()
    if not present:
        return _unknown_field(draw, body, message, notes)
    field, _ = draw(st.sampled_from(present))
    single = _copy(message)
    for other, _ in present:
        if other.name != field.name:
            single.ClearField(other.name)
    notes.append(f"encode {field.name} twice")
    return body + single.SerializeToString()


def _unknown_field(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    number = draw(st.one_of(st.integers(1, 20), st.integers(1, 2**29 - 1)))
    wire_type = draw(st.sampled_from((0, 1, 2, 5)))
    payload = {
        0: _varint(draw(st.integers(0, 2**64 - 1))),
        1: struct.pack("<Q", draw(st.integers(0, 2**64 - 1))),
        5: struct.pack("<I", draw(st.integers(0, 2**32 - 1))),
    }.get(wire_type)
    if payload is None:
        blob = draw(st.binary(max_size=32))
        payload = _varint(len(blob)) + blob
    notes.append(f"field {number} wire type {wire_type}")
    return body + _varint(number << 3 | wire_type) + payload


def _bad_utf8(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    """A string field whose bytes are not UTF-8 (protobuf refuses to parse it)."""
    strings = [f for f in message.DESCRIPTOR.fields if f.type == _T.TYPE_STRING]
    if not strings:
        return _unknown_field(draw, body, message, notes)
    field = draw(st.sampled_from(strings))
    blob = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"ab\xed\xa0\x80", b"\xf8\x88\x80\x80")))
    notes.append(f"{field.name} = invalid UTF-8 {blob.hex()}")
    return body + _varint(field.number << 3 | 2) + _varint(len(blob)) + blob


def _deep_groups(draw: st.DrawFn, body: bytes, message: Message, notes: list[str]) -> bytes:
    notes.append("deeply nested groups")
    return body + DEEP_GROUPS


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_WIRE_MUTATIONS: tuple[WireMutation, ...] = (
    _flip,
    _truncate,
    _insert,
    _duplicate_field,
    _unknown_field,
    _bad_utf8,
    _deep_groups,
)
