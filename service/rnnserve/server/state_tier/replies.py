"""A session's last reply, kept beside its state so that a retry of a lost reply gets it again.

With a shared state tier a step can be written to Redis and then lose its reply with the process
that ran it (kill -9 between the write and the send). The client, which never saw the reply,
sends the message again guarded by `expected_step_count`; the process that now holds the session
is one message ahead. If that message is the session's last one (same step counts, same input),
its reply is answered again from the rows kept here: the step is never applied twice and the
client sees the outputs an uninterrupted run gives.

Layout (integers little-endian):

    magic    8 bytes   b"RNNREPL\\0"
    start    u64       the session's step count before the message
    end      u64       the step count after it
    input    16 bytes  BLAKE2b digest of the message's validated input (dtype and values)
    steps    u8        0: a row per step, 1: the last step's row only
    count    u8        number of outputs (manifest order), then per output:
      ndim   u8        then ndim u32 dims, then the float32 values "<f4", C order
    mac      32 bytes  HMAC-SHA256 over the session id and everything above (keyed with the
                       snapshot secret when one is set, else a fixed key: then it is a checksum)

`decode` trusts nothing: every length is checked against what is left before anything is read.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import numpy as np
from rnnserve.server.domain import FloatArray, OutputSteps
from rnnserve.server.errors import InvalidSnapshot
from rnnserve.server.inputs import ModelInput

MAGIC = b"RNNREPL\x00"
_HEAD = struct.Struct("<8sQQ16sBB")
_DIM = struct.Struct("<I")
_DIMS = {n: struct.Struct(f"<B{n}I") for n in range(1, 9)}  # ndim and the dims, up to _MAX_DIMS
_MAC = 32
_CHECKSUM_KEY = b"rnnserve last reply"
_MAX_DIMS = 8
_STEPS = (OutputSteps.ALL, OutputSteps.LAST)


@dataclass(frozen=True)
class KeptReply:
    """A session's last reply: the message's step counts and input digest, and its rows."""

    start: int
    end: int
    input_digest: bytes
    steps: OutputSteps
    rows: list[FloatArray]

    @classmethod
    def of(
        cls, end: int, inputs: ModelInput, steps: OutputSteps, rows: list[FloatArray]
    ) -> KeptReply:
        """The reply to the message `inputs` that took the session to `end` steps."""
        return cls(end - len(inputs), end, input_digest(inputs), steps, rows)

    def answers(self, expected_step_count: int, step_count: int, inputs: ModelInput) -> bool:
        """Whether a message sent at `expected_step_count` with `inputs`, to a session now at
        `step_count`, is the message this reply answered."""
        return (
            self.start == expected_step_count
            and self.end == step_count
            and hmac.compare_digest(self.input_digest, input_digest(inputs))
        )

    def encode(self, session_id: str, secret: bytes | None) -> bytes:
        """The reply as the state tier stores it (see the layout above)."""
        steps = _STEPS.index(self.steps)
        parts = [_HEAD.pack(MAGIC, self.start, self.end, self.input_digest, steps, len(self.rows))]
        for row in self.rows:
            parts.append(_DIMS[row.ndim].pack(row.ndim, *row.shape))
            parts.append(row.astype("<f4", copy=False).tobytes())
        body = b"".join(parts)
        return body + _mac(session_id, body, secret)


def input_digest(inputs: ModelInput) -> bytes:
    """A message's identity: its validated input's kind and values (the model fixes the rest of
    its shape)."""
    kind = inputs.dtype.str.encode()
    return hashlib.blake2b(inputs.tobytes(), digest_size=16, person=kind).digest()


def decode(data: bytes, session_id: str, secret: bytes | None) -> KeptReply:
    """A kept reply, checked; InvalidSnapshot if it was not written for this session by a server
    with this secret, or does not parse."""
    if len(data) < _HEAD.size + _MAC:
        raise InvalidSnapshot("the kept reply is truncated")
    body, mac = data[:-_MAC], data[-_MAC:]
    if not hmac.compare_digest(mac, _mac(session_id, body, secret)):
        raise InvalidSnapshot("the kept reply fails its integrity check")
    magic, start, end, digest, steps, count = _HEAD.unpack_from(body)
    if magic != MAGIC or steps >= len(_STEPS) or end < start:
        raise InvalidSnapshot("the kept reply's header is not valid")
    at, rows = _HEAD.size, []
    for _ in range(count):
        if at >= len(body) or not 1 <= body[at] <= _MAX_DIMS:
            raise InvalidSnapshot("the kept reply's output header is not valid")
        ndim, at = body[at], at + 1
        if at + ndim * _DIM.size > len(body):
            raise InvalidSnapshot("the kept reply is truncated")
        shape = [_DIM.unpack_from(body, at + i * _DIM.size)[0] for i in range(ndim)]
        at += ndim * _DIM.size
        size = 4 * int(np.prod(shape, dtype=np.int64))
        if at + size > len(body):
            raise InvalidSnapshot("the kept reply is truncated")
        rows.append(np.frombuffer(body, dtype="<f4", count=size // 4, offset=at).reshape(shape))
        at += size
    if at != len(body):
        raise InvalidSnapshot("the kept reply has trailing bytes")
    return KeptReply(start, end, digest, _STEPS[steps], rows)


def _mac(session_id: str, body: bytes, secret: bytes | None) -> bytes:
    return hmac.digest(secret or _CHECKSUM_KEY, session_id.encode() + body, "sha256")
