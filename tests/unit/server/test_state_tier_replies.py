"""The kept last reply (state_tier/replies.py): what it answers, and what it refuses to read."""

from __future__ import annotations

import numpy as np
import pytest
from rnnserve.server.domain import OutputSteps
from rnnserve.server.errors import InvalidSnapshot
from rnnserve.server.state_tier import replies

SESSION = "Zq3kT0aBexampleSessionId"
INPUTS = np.array([4, 5, 6], dtype=np.int64)
ROWS = [
    np.arange(3 * 7, dtype=np.float32).reshape(3, 7),
    np.linspace(-1, 1, 3, dtype=np.float32).reshape(3, 1),
]


def _kept(secret: bytes | None = None, steps: OutputSteps = OutputSteps.ALL) -> bytes:
    return replies.KeptReply.of(13, INPUTS, steps, ROWS).encode(SESSION, secret)


@pytest.mark.parametrize("secret", [None, b"s3cret"])
def test_a_kept_reply_reads_back_exactly(secret: bytes | None) -> None:
    kept = replies.decode(_kept(secret), SESSION, secret)
    assert (kept.start, kept.end, kept.steps) == (10, 13, OutputSteps.ALL)
    for got, want in zip(kept.rows, ROWS, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert replies.decode(_kept(steps=OutputSteps.LAST), SESSION, None).steps is OutputSteps.LAST


@pytest.mark.parametrize("decoded", [False, True], ids=["in memory", "read back"])
def test_it_answers_only_the_same_message_at_the_same_step_counts(decoded: bool) -> None:
    kept = replies.KeptReply.of(13, INPUTS, OutputSteps.ALL, ROWS)
    if decoded:
        kept = replies.decode(kept.encode(SESSION, None), SESSION, None)
    assert kept.answers(10, 13, INPUTS.copy())
    assert not kept.answers(9, 13, INPUTS)  # sent at another step count
    assert not kept.answers(10, 14, INPUTS)  # the session moved on since
    assert not kept.answers(10, 13, np.array([4, 5, 7], dtype=np.int64))  # another input
    assert not kept.answers(10, 13, INPUTS.astype(np.float32))  # same values, other kind
    assert not kept.answers(10, 13, INPUTS.view(np.float64))  # same bytes, other kind


@pytest.mark.parametrize(
    ("session", "secret"),
    [("anotherSessionIdAltogether", None), (SESSION, b"wrong"), (SESSION, None)],
    ids=["other session", "wrong secret", "signed, read unsigned"],
)
def test_a_reply_of_another_session_or_secret_is_refused(
    session: str, secret: bytes | None
) -> None:
    with pytest.raises(InvalidSnapshot, match="integrity"):
        replies.decode(_kept(b"s3cret" if session == SESSION else None), session, secret)


def test_every_damaged_byte_and_every_truncation_is_refused() -> None:
    data = _kept()
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        with pytest.raises(InvalidSnapshot):
            replies.decode(bytes(damaged), SESSION, None)
    for end in range(len(data)):
        with pytest.raises(InvalidSnapshot):
            replies.decode(data[:end], SESSION, None)


def test_a_well_signed_but_malformed_body_is_refused() -> None:
    """Lengths are checked before they are used, even under a valid checksum."""
    good = _kept()[:-32]
    for body in (
        good[:-4],  # the last output is short
        good + b"\x00",  # trailing bytes
        good[:8] + b"\xff" + good[9:],  # another magic
        good[: replies._HEAD.size] + b"\x09" + good[replies._HEAD.size + 1 :],  # 9 dims
    ):
        signed = body + replies._mac(SESSION, body, None)
        with pytest.raises(InvalidSnapshot):
            replies.decode(signed, SESSION, None)
