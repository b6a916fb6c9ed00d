"""Heavy decoding and result building run in a worker thread, so other clients' steps flow.

A hop to a thread costs ~0.1 ms; decoding or encoding costs ~10 us per Predict sequence and
~3 us per top-k step (measured here). Work past the thresholds below (~1 ms and up) leaves the
event loop; the small, common messages (a token or a chunk a step) stay on it, where they are
cheapest. The thread still shares the GIL, but gives it back every switch interval (5 ms), so
the loop serves other calls in between instead of waiting for the whole job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

# A Predict (or a KServe batch) of at least this many sequences, or of this many steps in all.
LARGE_SEQUENCES = 64
LARGE_STEPS = 1024
# A step result of at least this many steps (top-k of 256 steps costs ~1.2 ms to encode).
LARGE_RESULT_STEPS = 256
# Text of at least this many characters: a word tokenizer takes ~7 us a token (4,096: ~28 ms).
LARGE_TEXT = 1024

P = ParamSpec("P")
R = TypeVar("R")


def is_large(sequences: int, steps: int) -> bool:
    """Whether decoding or encoding a request of this size is worth a thread."""
    return sequences >= LARGE_SEQUENCES or steps >= LARGE_STEPS


def is_long_text(data: object) -> bool:
    """Whether an input is text long enough that encoding it is worth a thread."""
    return isinstance(data, str) and len(data) >= LARGE_TEXT


async def run_sized(large: bool, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`function(*args, **kwargs)`: in a worker thread when `large`, else here on the loop."""
    if large:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)
