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
