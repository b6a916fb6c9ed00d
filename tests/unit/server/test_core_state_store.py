"""StateStore: states and last outputs per slot survive growth; reset and reuse clear them."""

from __future__ import annotations

import numpy as np
from rnnserve.server.manifest import StateSpec
from rnnserve.server.state_store import StateStore


def _store() -> StateStore:
    spec = StateSpec(input_name="h0", output_name="hn", shape=[2, 3])
    return StateStore([spec], capacity=2, last_output_width=4)


def test_last_output_is_kept_per_slot_across_growth() -> None:
    store = _store()
    slots = [store.allocate() for _ in range(5)]  # grows past the initial capacity of 2
    assert store.capacity >= 5
    for slot in slots:
        assert store.read_last_output(slot) is None
    rows = {slot: np.arange(4, dtype=np.float32) + 10 * slot for slot in slots[:2]}
    for slot, row in rows.items():
        store.write_last_output(slot, row)
    for _ in range(70):  # grow again with rows already written
        store.allocate()
    for slot, row in rows.items():
        got = store.read_last_output(slot)
        assert got is not None
        np.testing.assert_array_equal(got, row)
    assert not store.has_last_output(slots[2])


def test_last_output_is_a_copy_and_cleared_by_reset_and_reuse() -> None:
    store = _store()
    slot = store.allocate()
    row = np.ones(4, dtype=np.float32)
    store.write_last_output(slot, row)
    row[:] = 5  # the caller's array is not the stored one
    got = store.read_last_output(slot)
    assert got is not None
    np.testing.assert_array_equal(got, np.ones(4))
    got[:] = 7  # nor is a read
    np.testing.assert_array_equal(store.read_last_output(slot), np.ones(4))
    store.reset(slot)
    assert store.read_last_output(slot) is None
    store.write_last_output(slot, np.ones(4, dtype=np.float32))
    store.release(slot)
    again = store.allocate()
    assert again == slot and store.read_last_output(again) is None  # a reused slot starts clean
    store.write_last_output(again, np.ones(4, dtype=np.float32))
    store.write_last_output(again, None)
    assert not store.has_last_output(again)
