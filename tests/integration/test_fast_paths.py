"""The scheduler's per-epoch fast paths give exactly what the slow ones gave.

- `lr_access.read_scalar` reads the same number as `keras.ops.convert_to_numpy`;
- `state.checked_replace` returns the same state as `dataclasses.replace`, or
  raises the same error;
- `ScheduleState.begin_epoch` builds the same history as the list-based
  construction it replaced;
- in `fit`, the schedule sees, and the optimizer gets, the same floats as with
  the stock callback.

Runs on any backend (`KERAS_BACKEND=torch` included).
"""

import dataclasses
import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resumable_scheduler as rs
from resumable_scheduler.lr_access import current_rate, get_rate, read_scalar
from resumable_scheduler.state import ScheduleState, checked_replace


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32"])
@pytest.mark.parametrize("value", [0.1, 1e-7, 3.0, 0.0, 1234.567])
def test_read_scalar_reads_what_convert_to_numpy_reads(dtype, value):
    if dtype.startswith("int"):
        value = int(value)
    var = keras.Variable(value, dtype=dtype, trainable=False)
    for x in (var, var.value, keras.ops.convert_to_tensor(value, dtype=dtype)):
        expected = keras.ops.convert_to_numpy(x)
        got = read_scalar(x)
        if dtype.startswith("int"):
            assert int(got) == int(expected)
        else:
            assert float(got) == float(expected)


def test_rates_read_through_the_fast_path_are_the_slow_ones():
    sgd = keras.optimizers.SGD(learning_rate=0.1)
    assert get_rate(sgd) == current_rate(sgd) == float(keras.ops.convert_to_numpy(sgd.learning_rate))
    sched = rs.schedules.warmup_cosine(0.1, 10, 90)
    opt = keras.optimizers.SGD(learning_rate=sched)
    assert get_rate(opt) == sched.base_learning_rate
    assert current_rate(opt) == float(keras.ops.convert_to_numpy(opt.learning_rate))
    assert int(read_scalar(sgd.iterations)) == int(keras.ops.convert_to_numpy(sgd.iterations))
    # numpy values and Python numbers pass through unchanged
    assert float(read_scalar(np.float32(0.3))) == float(np.float32(0.3))
    assert float(read_scalar(0.3)) == 0.3


# -- checked_replace == dataclasses.replace -----------------------------------

rate = st.floats(min_value=0, max_value=10, allow_nan=False)
any_value = st.one_of(
    st.integers(-3, 30), rate, st.just(float("nan")), st.just(-1.0), st.just(True),
    st.none(), st.text(max_size=2), st.lists(rate, max_size=3),
    st.lists(st.lists(rate, max_size=3), max_size=2),
)
FIELDS = [f.name for f in dataclasses.fields(ScheduleState)]


@st.composite
def states(draw):
    n_opts = draw(st.integers(0, 2))
    epochs = draw(st.integers(0, 6))
    history = tuple(draw(st.lists(rate, min_size=epochs, max_size=epochs)))
    in_progress = epochs > 0 and draw(st.booleans())
    return ScheduleState(
        epoch=epochs - 1 if in_progress else epochs,
        batch=draw(st.integers(1, 5)) if in_progress else 0,
        step=draw(st.integers(0, 100)),
        learning_rate=draw(rate),
        initial_learning_rate=draw(rate),
        history=history,
        optimizer_learning_rates=tuple(draw(rate) for _ in range(n_opts)),
        optimizer_histories=tuple(
            tuple(draw(st.lists(rate, min_size=epochs, max_size=epochs))) for _ in range(n_opts)
        ),
    )


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except (ValueError, TypeError) as e:
        return (type(e), str(e))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=states(),
    changes=st.one_of(
        # anything, anywhere
        st.dictionaries(st.sampled_from(FIELDS + ["not_a_field"]), any_value, max_size=4),
        # mostly valid values of the fields the fast path checks on its own:
        # what is left to catch is a position that does not fit the history
        st.dictionaries(
            st.sampled_from(["epoch", "batch", "step", "learning_rate", "optimizer_learning_rates"]),
            st.one_of(st.integers(0, 7), rate, st.lists(rate, max_size=2).map(tuple)),
            max_size=3,
        ),
    ),
)
def test_checked_replace_is_dataclasses_replace(state, changes):
    fast = outcome(checked_replace, state, **changes)
    slow = outcome(dataclasses.replace, state, **changes)
    assert fast == slow
    if fast[0] == "ok":
        # Every field has the normalised type full validation gives it.
        assert fast[1].to_dict() == slow[1].to_dict()
        assert all(type(getattr(fast[1], f)) is type(getattr(slow[1], f)) for f in FIELDS)


# -- begin_epoch == the list-based construction it replaced ------------------


def reference_begin_epoch(s, epoch, rate, rates=()):
    hist = list(s.history[:epoch])
    while len(hist) < epoch:
        hist.append(s.learning_rate)
    hist.append(float(rate))
    hists = []
    for i, r in enumerate(rates):
        old = s.optimizer_histories[i] if i < len(s.optimizer_histories) else ()
        h = list(old[:epoch])
        fill = s.optimizer_learning_rates[i] if i < len(s.optimizer_learning_rates) else r
        while len(h) < epoch:
            h.append(fill)
        h.append(float(r))
        hists.append(tuple(h))
    return dataclasses.replace(
        s, epoch=epoch, batch=s.batch if epoch == s.epoch else 0, learning_rate=rate,
        history=tuple(hist), optimizer_learning_rates=tuple(float(r) for r in rates),
        optimizer_histories=tuple(hists),
    )


@settings(max_examples=300, deadline=None)
@given(state=states(), epoch=st.integers(0, 9), new=rate, data=st.data())
def test_begin_epoch_builds_what_the_list_construction_built(state, epoch, new, data):
    n = len(state.optimizer_learning_rates)
    rates = tuple(data.draw(st.lists(rate, min_size=n, max_size=n))) if n else ()
    got = state.begin_epoch(epoch, new, rates)
    assert got == reference_begin_epoch(state, epoch, new, rates)
    assert ScheduleState.from_dict(got.to_dict()) == got  # valid
    assert type(got.history) is tuple and all(type(h) is tuple for h in got.optimizer_histories)


def test_begin_epoch_still_rejects_bad_inputs():
    s = ScheduleState(learning_rate=0.1, initial_learning_rate=0.1)
    for args in ((-1, 0.1), (0, math.nan), (0, -0.5), (0, 0.1, [math.inf]), (0, 0.1, "ab")):
        with pytest.raises(ValueError):
            s.begin_epoch(*args)


# -- in fit: the same floats as the stock callback ---------------------------


def test_fit_reads_and_applies_the_stock_callbacks_floats():
    x = np.random.default_rng(0).normal(size=(16, 20)).astype("float32")
    y = np.zeros((16, 10), "float32")
    seen = {}
    for name, make in (("stock", keras.callbacks.LearningRateScheduler), ("rs", rs.LearningRateScheduler)):
        calls = seen[name] = []

        def schedule(epoch, lr, calls=calls):
            calls.append((epoch, lr))
            return lr * math.exp(-0.1) if epoch % 3 else lr / 3.0

        applied = []
        probe = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs, out=applied: out.append(logs["learning_rate"]),
        )
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(0.05), loss="mse")
        model.fit(x, y, epochs=25, batch_size=4, verbose=0, callbacks=[make(schedule), probe])
        seen[name + " applied"] = applied
        seen[name + " final"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert seen["rs"] == seen["stock"]
    assert all(type(lr) is float for _, lr in seen["rs"])
    assert seen["rs applied"] == seen["stock applied"]
    assert seen["rs final"] == seen["stock final"]
