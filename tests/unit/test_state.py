"""`rs.ScheduleState`: immutable, versioned, JSON-safe, strictly validated."""

import dataclasses
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resumable_scheduler as rs
from resumable_scheduler.state import STATE_VERSION, ScheduleState

KNOWN = (
    "version, epoch, batch, step, learning_rate, initial_learning_rate, history, "
    "optimizer_learning_rates, optimizer_histories"
)


def valid_state() -> ScheduleState:
    return ScheduleState(
        epoch=2,
        batch=0,
        step=10,
        learning_rate=0.005,
        initial_learning_rate=0.01,
        history=(0.01, 0.005),
    )


def test_round_trip_through_json_is_exact():
    s = valid_state()
    text = json.dumps(s.to_dict(), allow_nan=False)
    back = ScheduleState.from_dict(json.loads(text))
    assert back == s
    assert back.history == (0.01, 0.005)
    assert isinstance(back.history, tuple)


def test_is_immutable_and_transitions_return_new_values():
    s = valid_state()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epoch = 3  # type: ignore[misc]
    t = s.begin_epoch(2, 0.004)
    assert (s.epoch, s.history) == (2, (0.01, 0.005))
    assert (t.epoch, t.learning_rate, t.history) == (2, 0.004, (0.01, 0.005, 0.004))
    u = t.end_epoch(2, step=15)
    assert (u.epoch, u.batch, u.step, u.history) == (3, 0, 15, (0.01, 0.005, 0.004))


def test_begin_epoch_is_idempotent():
    # Beginning the same epoch again (after an interruption) replaces, never appends.
    s = valid_state().begin_epoch(2, 0.004)
    assert s.begin_epoch(2, 0.004) == s
    assert s.rate_for(2) == 0.004
    assert s.rate_for(3) is None


def test_begin_epoch_pads_skipped_epochs_with_the_rate_in_effect():
    s = valid_state().begin_epoch(5, 0.001)
    assert s.history == (0.01, 0.005, 0.005, 0.005, 0.005, 0.001)


def test_version_is_exported():
    assert rs.STATE_VERSION == STATE_VERSION == 1
    assert valid_state().to_dict()["version"] == 1


def test_dict_has_the_documented_keys():
    assert set(valid_state().to_dict()) == {
        "version", "epoch", "batch", "step", "learning_rate",
        "initial_learning_rate", "history", "optimizer_learning_rates",
        "optimizer_histories",
    }


def _with(**changes):
    return {**valid_state().to_dict(), **changes}


BAD_STATES = [
    pytest.param(
        _with(version=2),
        "Invalid value for field `version` of ScheduleState. Received: version=2. "
        "Expected 1 (this release of resumable_scheduler reads version 1 only).",
        id="unknown-version",
    ),
    pytest.param(
        _with(version=True),
        "Invalid value for field `version` of ScheduleState. Received: version=True. "
        "Expected 1 (this release of resumable_scheduler reads version 1 only).",
        id="bool-version",
    ),
    pytest.param(
        _with(epoch="2"),
        "Invalid value for field `epoch` of ScheduleState. Received: epoch='2'. "
        "Expected an integer >= 0.",
        id="mistyped-epoch",
    ),
    pytest.param(
        _with(step=2.0),
        "Invalid value for field `step` of ScheduleState. Received: step=2.0. "
        "Expected an integer >= 0.",
        id="float-step",
    ),
    pytest.param(
        _with(batch=-1),
        "Invalid value for field `batch` of ScheduleState. Received: batch=-1. "
        "Expected an integer >= 0.",
        id="negative-batch",
    ),
    pytest.param(
        _with(learning_rate=float("nan")),
        "Invalid value for field `learning_rate` of ScheduleState. "
        "Received: learning_rate=nan. Expected a finite number >= 0.",
        id="nan-lr",
    ),
    pytest.param(
        _with(initial_learning_rate=float("inf")),
        "Invalid value for field `initial_learning_rate` of ScheduleState. "
        "Received: initial_learning_rate=inf. Expected a finite number >= 0.",
        id="inf-initial-lr",
    ),
    pytest.param(
        _with(learning_rate="0.01"),
        "Invalid value for field `learning_rate` of ScheduleState. "
        "Received: learning_rate='0.01'. Expected a finite number >= 0.",
        id="string-lr",
    ),
    pytest.param(
        _with(history=[0.01, "x"]),
        "Invalid value for field `history[1]` of ScheduleState. "
        "Received: history[1]='x'. Expected a finite number >= 0.",
        id="mistyped-history-entry",
    ),
    pytest.param(
        _with(history="0.01"),
        "Invalid value for field `history` of ScheduleState. "
        "Received: history='0.01'. Expected a list of finite numbers >= 0.",
        id="string-history",
    ),
    pytest.param(
        _with(epoch=5),
        "Invalid value for field `history` of ScheduleState. "
        "Received: history=[0.01, 0.005]. Expected 5 or 6 entries for epoch=5.",
        id="history-too-short",
    ),
    pytest.param(
        _with(batch=3),
        "Invalid value for field `history` of ScheduleState. "
        "Received: history=[0.01, 0.005]. Expected 3 entries: batch=3 means epoch 2 "
        "is in progress.",
        id="mid-epoch-without-its-rate",
    ),
    pytest.param(
        _with(optimizer_histories=[[0.01, 0.005]]),
        "Invalid value for field `optimizer_histories` of ScheduleState. "
        "Received: optimizer_histories=[[0.01, 0.005]]. Expected one list per entry "
        "of optimizer_learning_rates (0).",
        id="histories-without-rates",
    ),
    pytest.param(
        _with(extra=1),
        f"Invalid value for field `extra` of ScheduleState. Received: extra=1. "
        f"Expected no such field (known fields: {KNOWN}).",
        id="unknown-field",
    ),
    pytest.param(
        [1, 2],
        "Invalid ScheduleState. Received: list [1, 2]. Expected a dict with the keys "
        "version, epoch, batch, step, learning_rate, initial_learning_rate, history.",
        id="not-a-dict",
    ),
]


@pytest.mark.parametrize("data, message", BAD_STATES)
def test_bad_state_dicts_raise_with_exact_text(data, message):
    with pytest.raises(ValueError) as info:
        ScheduleState.from_dict(data)
    assert str(info.value) == message


@pytest.mark.parametrize("field", ["version", "epoch", "step", "learning_rate", "history"])
def test_missing_field_is_named(field):
    data = valid_state().to_dict()
    del data[field]
    with pytest.raises(ValueError, match=re.escape(f"Missing field `{field}` in ScheduleState. Received keys: ")):
        ScheduleState.from_dict(data)


def test_set_state_rejects_bad_state_and_keeps_the_old_one():
    cb = rs.LearningRateScheduler(lambda e, lr: lr)
    cb.set_state(valid_state().to_dict())
    with pytest.raises(ValueError, match=re.escape("Received: learning_rate=nan.")):
        cb.set_state(_with(learning_rate=float("nan")))
    assert cb.state == valid_state()


def test_constructing_an_invalid_state_directly_fails():
    with pytest.raises(ValueError, match=re.escape("Received: epoch=-1. Expected an integer >= 0.")):
        ScheduleState(epoch=-1)


# -- property-based: from_dict returns a valid state or raises ValueError ----

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_like = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
rates = st.floats(min_value=0, max_value=10, allow_nan=False)


@st.composite
def valid_state_dicts(draw):
    epoch = draw(st.integers(min_value=0, max_value=20))
    in_progress = draw(st.booleans())
    history = draw(st.lists(rates, min_size=epoch + in_progress, max_size=epoch + in_progress))
    n_opt = draw(st.integers(min_value=0, max_value=2))
    return {
        "version": 1,
        "epoch": epoch,
        "batch": draw(st.integers(min_value=1, max_value=50)) if in_progress else 0,
        "step": draw(st.integers(min_value=0, max_value=2**63 - 1)),  # int64, the bound
        "learning_rate": draw(rates),
        "initial_learning_rate": draw(rates),
        "history": history,
        "optimizer_learning_rates": draw(st.lists(rates, min_size=n_opt, max_size=n_opt)),
        "optimizer_histories": [
            draw(st.lists(rates, min_size=len(history), max_size=len(history))) for _ in range(n_opt)
        ],
    }


@st.composite
def mutated_state_dicts(draw):
    data = draw(valid_state_dicts())
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    key = draw(st.sampled_from(sorted(data)))
    if action == "replace":
        data[key] = draw(json_like)
    elif action == "delete":
        del data[key]
    else:
        data[draw(st.text(max_size=8))] = draw(json_like)
    return data


def _check(data):
    try:
        state = ScheduleState.from_dict(data)
    except ValueError:
        return
    # Whatever is accepted is a valid, JSON-safe state that round-trips.
    d = state.to_dict()
    json.dumps(d, allow_nan=False)
    assert ScheduleState.from_dict(d) == state
    assert all(math.isfinite(r) and r >= 0 for r in (state.learning_rate, *state.history))
    assert len(state.history) in (state.epoch, state.epoch + 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like)
def test_from_dict_on_arbitrary_json_never_raises_anything_but_valueerror(data):
    _check(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_state_dicts())
def test_from_dict_on_mutated_states_never_raises_anything_but_valueerror(data):
    _check(data)


@settings(max_examples=50, deadline=None)
@given(valid_state_dicts())
def test_valid_states_are_accepted_unchanged(data):
    assert ScheduleState.from_dict(data).to_dict() == data


@settings(max_examples=100, deadline=None)
@given(
    valid_state_dicts(),
    st.lists(st.tuples(st.integers(min_value=0, max_value=25), rates), min_size=1, max_size=6),
)
def test_begin_epoch_always_yields_a_state_that_validates(data, steps):
    # begin_epoch skips re-validating the history (valid by construction);
    # check that construction against the full validation.
    state = ScheduleState.from_dict(data)
    n_opt = len(state.optimizer_learning_rates)
    for epoch, rate in steps:
        state = state.begin_epoch(epoch, rate, (rate,) * n_opt)
        assert ScheduleState.from_dict(state.to_dict()) == state
        assert state.history[epoch] == rate and len(state.history) == epoch + 1


@pytest.mark.parametrize("rate", [float("nan"), -1.0, "0.1"])
def test_begin_epoch_rejects_a_bad_rate(rate):
    with pytest.raises(ValueError, match=re.escape("Invalid value for field `learning_rate` of ScheduleState.")):
        valid_state().begin_epoch(2, rate)


def test_counts_are_bounded_to_int64():
    assert ScheduleState.from_dict(_with(step=2**63 - 1)).step == 2**63 - 1
    with pytest.raises(ValueError) as info:
        ScheduleState.from_dict(_with(step=2**63))
    assert str(info.value) == (
        "Invalid value for field `step` of ScheduleState. Received: step=9223372036854775808. "
        "Expected an integer >= 0 and <= 9223372036854775807 (int64)."
    )
    with pytest.raises(ValueError, match=re.escape("Received: epoch=1000000000000000000000000000000.")):
        ScheduleState.from_dict(_with(epoch=10**30))


@pytest.mark.parametrize("data", [
    pytest.param(_with(history="x" * 10_000_000), id="huge-string"),
    pytest.param(_with(learning_rate=[0.1] * 1_000_000), id="huge-list"),
    pytest.param({**_with(), "y" * 1_000_000: 1}, id="huge-field-name"),
])
def test_messages_echo_a_bounded_part_of_a_huge_value(data):
    with pytest.raises(ValueError) as info:
        ScheduleState.from_dict(data)
    assert len(str(info.value)) < 600, len(str(info.value))
