"""resumable_scheduler.data: what a checkpoint's input record may hold."""

from __future__ import annotations

import pytest

from resumable_scheduler import data, rng


def test_a_carried_pass_rng_state_round_trips():
    state = rng.capture_host_rng()
    record = {"pass_offset": 2, "pass_rng": data._encode_rng(state)}
    carried = data.carried_pass(record, 3)
    assert carried is not None and carried.offset == 2 and carried.epoch == 3
    meta, arrays = carried.rng
    assert meta == state[0] and sorted(arrays) == sorted(state[1])


@pytest.mark.parametrize("pass_rng", [
    {"meta": {}, "arrays": {}},  # no numpy/python entries
    {"meta": {"numpy": {}, "python": {}}, "arrays": {"x": {"dtype": "O", "shape": [1], "b64": "AAAAAAAAAAA="}}},
    {"meta": [], "arrays": {}},
])
def test_a_crafted_carried_pass_rng_state_is_refused_by_name(pass_rng):
    with pytest.raises(ValueError, match=r"pass_rng"):
        data.carried_pass({"pass_offset": 2, "pass_rng": pass_rng})


def test_no_carried_pass_without_an_offset():
    assert data.carried_pass({"pass_offset": 0, "pass_rng": {}}) is None
    assert data.carried_pass(None) is None


@pytest.mark.parametrize("offset, ok", [(None, True), (0, True), (6, True), (-1, False), (1.5, False), ("6", False)])
def test_a_grain_iterator_pass_offset_is_checked_by_name(offset, ok):
    pytest.importorskip("grain")
    from resumable_scheduler.data import grain as positioner

    state = {"kind": "IterDataset", "batch_size": 4, "source_len": 40, "state": None, "pass_offset": offset}
    if ok:
        assert positioner.check_state(state, 2) is state
    else:
        with pytest.raises(ValueError, match=r"field 'pass_offset' must be a non-negative integer or null, got "):
            positioner.check_state(state, 2)
