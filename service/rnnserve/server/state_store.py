"""StateStore: all of one model version's session state — rows, last outputs, step counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import FloatArray
from rnnserve.server.manifest import StateSpec

SlotArray = npt.NDArray[np.intp]
_Array = TypeVar("_Array", bound=npt.NDArray[Any])

_INITIAL_CAPACITY = 64


@dataclass(frozen=True)
class SlotState:
    """One slot's whole mutable state, as exported to and imported from a snapshot."""

    states: list[FloatArray]  # each without the batch axis, manifest order
    last_output: FloatArray | None
    step_count: int


@dataclass(slots=True)
class Commit:
    """What one commit of a batch overwrote, so that any of its rows can be rolled back."""

    slots: SlotArray
    states: Sequence[FloatArray]  # the rows' states before, batch axis in the model's place
    last_outputs: FloatArray | None  # [rows, width] before (language models)
    had_last: npt.NDArray[np.bool_] | None
    steps: int | npt.NDArray[np.int64]  # steps every row advanced, or each row's


class StateStore:
    """Preallocated state arrays indexed by session slot; grown as needed, freed slots reused.

    It owns everything about a session that a step changes: the recurrent state rows, a language
    model's last logits (for Generate without a prompt) and the step count. `commit` writes all
    three for a batch of finished steps and `roll_back` undoes one row, so no other part of the
    server writes session state piecemeal.

    Each state array keeps the model's own layout with the slot axis where the batch axis is
    (e.g. [layers*dirs, capacity, hidden]), so gathering a batch is one `np.take` that yields the
    exact tensor onnxruntime wants, and scattering back is one fancy-index assignment. Last
    outputs are rows of one [capacity, width] array, not one small array per session (~0.2 KB of
    object and allocator overhead each). Only the event loop thread touches a store, so growth
    never races a gather.
    """

    def __init__(
        self,
        specs: Sequence[StateSpec],
        capacity: int = _INITIAL_CAPACITY,
        *,
        last_output_index: int | None = None,
        last_output_width: int = 0,
    ) -> None:
        self.specs = list(specs)
        self.slot_bytes = sum(spec.nbytes for spec in self.specs)
        # Which model output's last step is kept per slot (None: the model keeps none).
        self.last_output_index = last_output_index
        self._capacity = max(1, capacity)
        self._arrays = [_filled(s, self._capacity) for s in self.specs]
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self._last_width = last_output_width
        self._last: FloatArray = np.zeros((self._capacity, last_output_width), dtype=np.float32)
        self._has_last: npt.NDArray[np.bool_] = np.zeros(self._capacity, dtype=bool)
        self._steps: npt.NDArray[np.int64] = np.zeros(self._capacity, dtype=np.int64)

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
        self._last = _grown(self._last, capacity)
        self._has_last = _grown(self._has_last, capacity)
        self._steps = _grown(self._steps, capacity)
        self._free.extend(range(capacity - 1, self._capacity - 1, -1))
        self._arrays, self._capacity = grown, capacity

    def reset(self, slot: int) -> None:
        """Set a slot back to the initial state, with no last output and step count 0."""
        for spec, array in zip(self.specs, self._arrays, strict=True):
            array[_key(spec, slot)] = spec.initial_value
        self._has_last[slot] = False
        self._steps[slot] = 0

    def step_count(self, slot: int) -> int:
        """Steps the slot's state has taken since it was created or reset."""
        return int(self._steps[slot])

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

    def initial_batch(self, batch: int) -> list[FloatArray]:
        """Initial-state tensors for a batch of fresh sequences (stateless calls)."""
        return [np.full(s.full_shape(batch), s.initial_value, dtype=np.float32) for s in self.specs]

    def commit(
        self,
        slots: SlotArray,
        before: Sequence[FloatArray],
        states: Sequence[FloatArray],
        outputs: Sequence[FloatArray],
        steps: int | npt.NDArray[np.int64],
    ) -> Commit:
        """Write finished steps of `slots`: new states, last outputs, step counts, as one event.

        `before` are the rows' states before the steps (the caller gathered them for the call, so
        keeping them costs nothing); `outputs` the call's outputs [batch, time, ...] aligned with
        `slots`. Returns what is needed to roll any row back.
        """
        last: FloatArray | None = None
        had: npt.NDArray[np.bool_] | None = None
        if self.last_output_index is not None:
            last, had = self._last[slots], self._has_last[slots]  # fancy indexing copies
            self._last[slots] = outputs[self.last_output_index][:, -1]
            self._has_last[slots] = True
        for spec, array, value in zip(self.specs, self._arrays, states, strict=True):
            array[_key(spec, slots)] = value
        self._steps[slots] += steps
        return Commit(slots, before, last, had, steps)

    def roll_back(self, commit: Commit, row: int) -> None:
        """Undo row `row` of `commit`: its slot holds again what it held before."""
        slot = int(commit.slots[row])
        for spec, array, before in zip(self.specs, self._arrays, commit.states, strict=True):
            array[_key(spec, slot)] = np.take(before, row, axis=spec.batch_axis)
        if commit.last_outputs is not None and commit.had_last is not None:
            self._last[slot] = commit.last_outputs[row]
            self._has_last[slot] = commit.had_last[row]
        steps = commit.steps
        self._steps[slot] -= steps if isinstance(steps, int) else int(steps[row])

    def read(self, slot: int) -> SlotState:
        """One slot's whole state (copies)."""
        states = [
            np.array(array[_key(spec, slot)], dtype=np.float32)
            for spec, array in zip(self.specs, self._arrays, strict=True)
        ]
        return SlotState(states, self.read_last_output(slot), self.step_count(slot))

    def views(self, slot: int) -> tuple[list[FloatArray], FloatArray | None]:
        """One slot's states and last output as views (no copies): read them before the next
        commit or write touches the slot."""
        states = [
            array[_key(spec, slot)] for spec, array in zip(self.specs, self._arrays, strict=True)
        ]
        return states, (self._last[slot] if self._has_last[slot] else None)

    def write(self, slot: int, state: SlotState) -> None:
        """Set one slot's whole state (states without the batch axis)."""
        for spec, array, value in zip(self.specs, self._arrays, state.states, strict=True):
            array[_key(spec, slot)] = value
        self.write_last_output(slot, state.last_output)
        self._steps[slot] = state.step_count


def _filled(spec: StateSpec, capacity: int) -> FloatArray:
    """A state array for `capacity` slots at the initial value.

    Zeros come from calloc: the pages of slots never used are not touched, so they cost address
    space but no resident memory (slots are set to the initial value when allocated anyway).
    """
    if spec.initial_value == 0.0:
        return np.zeros(spec.full_shape(capacity), dtype=np.float32)
    return np.full(spec.full_shape(capacity), spec.initial_value, dtype=np.float32)


def _grown(array: _Array, capacity: int) -> _Array:
    """`array` (slot axis first) with zeroed rows added up to `capacity`."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return cast(_Array, grown)


def _key(spec: StateSpec, where: int | slice | SlotArray) -> tuple[int | slice | SlotArray, ...]:
    """An index selecting `where` along the batch axis."""
    return (slice(None),) * spec.batch_axis + (where,)
