"""StateStore: all sessions' recurrent state for one model version, one array per state tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rnnserve.server.manifest import StateSpec

FloatArray = npt.NDArray[np.float32]
SlotArray = npt.NDArray[np.intp]

_INITIAL_CAPACITY = 64


class StateStore:
    """Preallocated state arrays indexed by session slot; grown as needed, freed slots reused.

    Each array keeps the model's own layout with the slot axis where the batch axis is (e.g.
    [layers*dirs, capacity, hidden]), so gathering a batch is one `np.take` that yields the exact
    tensor onnxruntime wants, and scattering back is one fancy-index assignment. Only the event
    loop thread touches a store, so growth never races a gather.
    """

    def __init__(
        self,
        specs: Sequence[StateSpec],
        capacity: int = _INITIAL_CAPACITY,
        *,
        last_output_width: int = 0,
    ) -> None:
        self.specs = list(specs)
        self._capacity = max(1, capacity)
        self._arrays = [_filled(s, self._capacity) for s in self.specs]
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self.slot_bytes = sum(4 * int(np.prod(s.shape)) for s in self.specs)
        # A language model's last logits per slot (for Generate without a prompt): rows of one
        # [capacity, width] array beside the states, not one small array per session (~0.2 KB of
        # object and allocator overhead each), and a flag saying which rows are set.
        self._last_width = last_output_width
        self._last = np.zeros((self._capacity, last_output_width), dtype=np.float32)
        self._has_last = np.zeros(self._capacity, dtype=bool)

    @property
    def capacity(self) -> int:
        """Slots allocated (used or free)."""
        return self._capacity

    @property
    def used(self) -> int:
        """Slots held by sessions."""
        return self._capacity - len(self._free)

    def allocate(self) -> int:
        """A slot set to the initial state; grows the arrays by half when none is free."""
        if not self._free:
            self._grow(self._capacity + max(_INITIAL_CAPACITY, self._capacity // 2))
        slot = self._free.pop()
        self.reset(slot)
        return slot

    def release(self, slot: int) -> None:
        """Give a slot back for reuse."""
        self._free.append(slot)

    def _grow(self, capacity: int) -> None:
        grown = []
        for spec, old in zip(self.specs, self._arrays, strict=True):
            new = _filled(spec, capacity)
            new[_key(spec, slice(0, self._capacity))] = old
            grown.append(new)
        last = np.zeros((capacity, self._last_width), dtype=np.float32)
        last[: self._capacity] = self._last
        has_last = np.zeros(capacity, dtype=bool)
        has_last[: self._capacity] = self._has_last
        self._free.extend(range(capacity - 1, self._capacity - 1, -1))
        self._arrays, self._capacity = grown, capacity
        self._last, self._has_last = last, has_last

    def reset(self, slot: int) -> None:
        """Set a slot back to the initial state, with no last output."""
        for spec, array in zip(self.specs, self._arrays, strict=True):
            array[_key(spec, slot)] = spec.initial_value
        self._has_last[slot] = False

    def has_last_output(self, slot: int) -> bool:
        """True if the slot holds a last output row."""
        return bool(self._has_last[slot])

    def read_last_output(self, slot: int) -> FloatArray | None:
        """The slot's last output row (a copy), or None if it has none."""
        if not self._has_last[slot]:
            return None
        row: FloatArray = self._last[slot].copy()
        return row

    def write_last_output(self, slot: int, row: FloatArray | None) -> None:
        """Set (or with None, clear) the slot's last output row."""
        if row is None:
            self._has_last[slot] = False
            return
        self._last[slot] = row
        self._has_last[slot] = True

    def gather(self, slots: SlotArray) -> list[FloatArray]:
        """The states of `slots` as batch tensors in the model's layout (fresh copies)."""
        return [
            np.take(array, slots, axis=spec.batch_axis)
            for spec, array in zip(self.specs, self._arrays, strict=True)
        ]

    def scatter(self, slots: SlotArray, states: Sequence[FloatArray]) -> None:
        """Write batch tensors (batch axis in the model's place) back into `slots`."""
        for spec, array, value in zip(self.specs, self._arrays, states, strict=True):
            array[_key(spec, slots)] = value

    def read(self, slot: int) -> list[FloatArray]:
        """One slot's states without the batch axis (copies), in manifest order."""
        return [
            np.array(array[_key(spec, slot)], dtype=np.float32)
            for spec, array in zip(self.specs, self._arrays, strict=True)
        ]

    def write(self, slot: int, states: Sequence[FloatArray]) -> None:
        """Set one slot's states (each without the batch axis)."""
        for spec, array, value in zip(self.specs, self._arrays, states, strict=True):
            array[_key(spec, slot)] = value

    def initial_batch(self, batch: int) -> list[FloatArray]:
        """Initial-state tensors for a batch of fresh sequences (stateless calls)."""
        return [np.full(s.full_shape(batch), s.initial_value, dtype=np.float32) for s in self.specs]


def _filled(spec: StateSpec, capacity: int) -> FloatArray:
    """A state array for `capacity` slots at the initial value.

    Zeros come from calloc: the pages of slots never used are not touched, so they cost address
    space but no resident memory (slots are set to the initial value when allocated anyway).
    """
    if spec.initial_value == 0.0:
        return np.zeros(spec.full_shape(capacity), dtype=np.float32)
    return np.full(spec.full_shape(capacity), spec.initial_value, dtype=np.float32)


def _key(spec: StateSpec, where: int | slice | SlotArray) -> tuple[int | slice | SlotArray, ...]:
    """An index selecting `where` along the batch axis."""
    return (slice(None),) * spec.batch_axis + (where,)
