"""rs.ReduceLROnPlateau: a resumed run reduces the rate at the same epochs as
an uninterrupted one (stock Keras resets its counters: FINDINGS row 8)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.monitor_helpers import BATCH_SIZE, EPOCHS, MECHANISMS, X, Y, assert_same_weights, make_model, run

# On JAX: wait > 0 after epochs 4, 7, 9, 11, 13; cooldown after the
# reductions at 5, 8, 10, 12, 14.
PLATEAU = dict(monitor="loss", factor=0.5, patience=2, min_delta=5e-3, cooldown=1)
INTERRUPTIONS = [2, 5, 6, 9, 12]


def ours():
    return [rs.ReduceLROnPlateau(**PLATEAU)]


def stock():
    return [keras.callbacks.ReduceLROnPlateau(**PLATEAU)]


class Counters(keras.callbacks.Callback):
    """(wait, cooldown_counter) of `cb` after each epoch (placed after it)."""

    def __init__(self, cb):
        super().__init__()
        self.cb, self.rows = cb, []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((self.cb.wait, self.cb.cooldown_counter))


@pytest.fixture(scope="module")
def reference():
    logs, model, _ = run(ours)
    return logs, model


@pytest.fixture(scope="module")
def counters():
    (cb,) = ours()
    c = Counters(cb)
    run(lambda: [cb, c])
    return c.rows


@pytest.fixture(scope="module")
def shuffled_reference():
    model = make_model()
    h = model.fit(X, Y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, callbacks=ours(), verbose=0)
    return dict(h.history), model


def test_reference_reduces_several_times(reference):
    logs, _ = reference
    rates = logs["learning_rate"]
    reductions = sum(b < a for a, b in zip(rates, rates[1:]))
    assert reductions >= 4, rates
    # Drop-in: the same decisions as the stock callback.
    stock_logs, stock_model, _ = run(stock)
    assert stock_logs["learning_rate"] == rates
    assert_same_weights(stock_model, reference[1])


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("at", INTERRUPTIONS)
def test_resumed_run_equals_uninterrupted(tmp_path, reference, shuffled_reference, mechanism, at):
    logs, model, _ = run(ours, tmp_path, mechanism, at)
    # rs.BackupAndRestore runs shuffled (it restores the RNG); the others do not.
    ref_logs, ref_model = shuffled_reference if mechanism == "rs_backup" else reference
    assert logs["learning_rate"] == ref_logs["learning_rate"]
    assert logs["loss"] == ref_logs["loss"]
    assert_same_weights(model, ref_model)


def test_stock_drifts_ours_does_not(tmp_path, reference, counters):
    """Side by side, resumed through stock BackupAndRestore at an epoch where
    the plateau counters matter. When Keras fixes the reset, the stock
    assertion fails and this test says so."""
    ref_logs, _ = reference
    at = next(e + 1 for e, (wait, _) in enumerate(counters) if e >= 2 and wait > 0)  # 5 on JAX
    ours_logs, _, _ = run(ours, tmp_path / "ours", "stock_backup", at)
    stock_logs, _, _ = run(stock, tmp_path / "stock", "stock_backup", at)
    assert ours_logs["learning_rate"] == ref_logs["learning_rate"]
    assert stock_logs["learning_rate"] != ref_logs["learning_rate"], (
        "stock ReduceLROnPlateau no longer drifts after a resume: Keras fixed the reset"
    )
    # Stock reduces later than it should: the first reduction after the resume is delayed.
    first = next(i for i, (a, b) in enumerate(zip(ref_logs["learning_rate"], stock_logs["learning_rate"])) if a != b)
    assert first >= at and stock_logs["learning_rate"][first] > ref_logs["learning_rate"][first]


# -- what resets at a new fit, what persists ------------------------------------


def test_continued_fit_in_same_process_persists(reference):
    """fit(epochs=8) then fit(initial_epoch=8): one run, as if never split."""
    ref_logs, ref_model = reference
    model, (cb,) = make_model(), ours()
    h1 = model.fit(X, Y, epochs=8, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb], verbose=0)
    h2 = model.fit(X, Y, epochs=EPOCHS, initial_epoch=8, batch_size=BATCH_SIZE, shuffle=False,
                   callbacks=[cb], verbose=0)
    assert h1.history["learning_rate"] + h2.history["learning_rate"] == ref_logs["learning_rate"]
    assert_same_weights(model, ref_model)


def test_new_run_from_epoch_zero_resets(reference):
    """Reusing one instance for a second run from epoch 0 behaves like a fresh
    instance (as stock Keras): wait, best and cooldown start over."""
    ref_logs, ref_model = reference
    (cb,) = ours()
    make_model().fit(X, Y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb], verbose=0)
    assert cb.state.epoch == EPOCHS and cb.state.cooldown_counter + cb.state.wait > 0
    model = make_model()
    h = model.fit(X, Y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb], verbose=0)
    assert h.history["learning_rate"] == ref_logs["learning_rate"]
    assert_same_weights(model, ref_model)


def test_restored_state_persists_even_from_epoch_zero():
    """A state handed over by set_state is never reset; starting at another
    epoch than the one it was taken at says so."""
    (cb,) = ours()
    make_model().fit(X, Y, epochs=5, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb], verbose=0)
    saved = cb.get_state()
    assert saved["wait"] == 1
    (cb2,) = ours()
    cb2.set_state(saved)
    with pytest.warns(UserWarning, match=r"taken after 5 epoch\(s\), but this fit starts at epoch 0"):
        make_model().fit(X, Y, epochs=1, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb2], verbose=0)
    assert cb2.state.epoch == 1 and cb2.state.best == saved["best"]


def test_checkpoint_callback_before_us_warns(tmp_path):
    mc = keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))
    with pytest.warns(UserWarning, match="before this callback saw that epoch's logs"):
        make_model().fit(X, Y, epochs=1, batch_size=BATCH_SIZE, callbacks=[mc, *ours()], verbose=0)


def test_rs_restore_returns_the_epoch_and_read_state_shows_ours(tmp_path):
    (cb,) = ours()
    model = make_model()
    model.fit(X, Y, epochs=6, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb], verbose=0)
    model.save_weights(str(tmp_path / "w.weights.h5"))
    saved = rs.read_state(tmp_path / "w.weights.h5")["callbacks"]["ReduceLROnPlateau"]
    assert saved == cb.get_state()
    assert saved["epoch"] == 6 and saved["cooldown_counter"] == 1
    (cb2,) = ours()
    assert rs.restore(tmp_path / "w.weights.h5", cb2) == 6
    assert cb2.state == cb.state


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"wait": -1}, "Invalid value for field `wait` of PlateauState. Received: wait=-1. Expected an integer >= 0."),
        ({"best": float("nan")}, "Invalid value for field `best` of PlateauState. Received: best=nan. "
                                 'Expected a finite number, null, "nan", "inf" or "-inf".'),
        ({"best": "big"}, "Invalid value for field `best` of PlateauState. Received: best='big'."),
        ({"learning_rates": [0.1, -1.0]}, "Invalid value for field `learning_rates[1]` of PlateauState. "
                                          "Received: learning_rates[1]=-1.0."),
        ({"version": 2}, "Invalid value for field `version` of PlateauState. Received: version=2."),
        ({"cooldown_counter": True}, "Invalid value for field `cooldown_counter` of PlateauState. "
                                     "Received: cooldown_counter=True."),
        ({"extra": 1}, "Invalid value for field `extra` of PlateauState. Received: extra=1. Expected no such field"),
    ],
)
def test_set_state_rejects_bad_input_and_changes_nothing(change, message):
    (cb,) = ours()
    good = rs.ReduceLROnPlateau(**PLATEAU).get_state()
    before = cb.get_state()
    with pytest.raises(ValueError) as e:
        cb.set_state({**good, **change})
    assert str(e.value).startswith(message)
    assert cb.get_state() == before


def test_set_state_missing_field():
    good = rs.ReduceLROnPlateau(**PLATEAU).get_state()
    del good["best"]
    with pytest.raises(ValueError, match=r"^Missing field `best` in PlateauState\."):
        rs.ReduceLROnPlateau().set_state(good)


def test_state_is_json_and_nonfinite_best_round_trips():
    import json

    cb = rs.ReduceLROnPlateau(**PLATEAU)
    cb.set_state({**cb.get_state(), "best": "inf", "wait": 3})
    doc = json.loads(json.dumps(cb.get_state(), allow_nan=False))
    assert doc["best"] == "inf" and cb.best == float("inf") and doc["wait"] == 3


def test_same_instance_restored_after_an_exception_into_a_fresh_optimizer(tmp_path, reference):
    """The callback object that saw the interrupted fit is restored and reused
    with a reloaded model whose optimizer was compiled afresh: the rate comes
    from the state."""
    from tests.support.monitor_helpers import InterruptAt, Interrupted

    ref_logs, ref_model = reference
    (cb,) = ours()
    model = make_model()
    mc = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch:02d}.keras"))
    with pytest.raises(Interrupted):
        model.fit(X, Y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb, mc, InterruptAt(9)],
                  verbose=0)
    before = model.history.history["learning_rate"]
    model = keras.models.load_model(tmp_path / "e09.keras")
    model.compile(keras.optimizers.SGD(0.2), loss="mse")
    assert rs.restore(tmp_path / "e09.keras", cb) == 9
    h = model.fit(X, Y, epochs=EPOCHS, initial_epoch=9, batch_size=BATCH_SIZE, shuffle=False, callbacks=[cb],
                  verbose=0)
    assert before + h.history["learning_rate"] == ref_logs["learning_rate"]
    assert_same_weights(model, ref_model)
