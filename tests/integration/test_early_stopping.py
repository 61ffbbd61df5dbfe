"""rs.EarlyStopping: a resumed run stops at the same epoch and restores the
same best weights as an uninterrupted one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.monitor_helpers import BATCH_SIZE, EPOCHS, MECHANISMS, X, Y, assert_same_weights, make_model, run

# Improves (by more than min_delta) for a few epochs, then stops well before
# EPOCHS (on JAX: best epoch 5, stop at 8; shuffled, 3 and 6). Interruptions
# are placed relative to the reference's best and stop epochs.
ES = dict(monitor="loss", patience=3, min_delta=2e-3, restore_best_weights=True)
POSITIONS = ["early", "at_best", "after_best", "at_stop"]


def position(name, cb):
    return {"early": 2, "at_best": cb.best_epoch, "after_best": cb.best_epoch + 1, "at_stop": cb.stopped_epoch}[name]


def ours(**kw):
    return [rs.EarlyStopping(**{**ES, **kw})]


class LastWeights(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


def _fit(model, cbs, **kw):
    kw = {"epochs": EPOCHS, "batch_size": BATCH_SIZE, "shuffle": False, "verbose": 0, **kw}
    return model.fit(X, Y, callbacks=cbs, **kw)


@pytest.fixture(scope="module")
def reference():
    logs, model, (cb,) = run(ours)
    return logs, model, cb


@pytest.fixture(scope="module")
def shuffled_reference():
    model, (cb,) = make_model(), ours()
    h = _fit(model, [cb], shuffle=True)
    return dict(h.history), model, cb


def test_reference_stops_early_and_restores_older_weights(reference):
    logs, model, cb = reference
    assert 2 < cb.best_epoch < cb.stopped_epoch - 1
    assert len(logs["loss"]) == cb.stopped_epoch + 1 < EPOCHS
    last = LastWeights()
    model2 = make_model()
    _fit(model2, ours() + [last])
    # The restored weights are not the last ones, so restoring them is tested.
    assert any(not np.array_equal(a, b) for a, b in zip(last.weights, model.get_weights()))
    # Drop-in: the same as stock.
    stock_model = make_model()
    h = _fit(stock_model, [keras.callbacks.EarlyStopping(**ES)])
    assert h.history["loss"] == logs["loss"]
    assert_same_weights(stock_model, model)


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("where", POSITIONS)
def test_resumed_run_stops_at_same_epoch_with_same_weights(tmp_path, reference, shuffled_reference, mechanism, where):
    ref_logs, ref_model, ref_cb = shuffled_reference if mechanism == "rs_backup" else reference
    at = position(where, ref_cb)
    assert 0 < at <= ref_cb.stopped_epoch
    logs, model, (cb,) = run(ours, tmp_path, mechanism, at)
    assert logs["loss"] == ref_logs["loss"]  # same epochs, so the same stop epoch
    assert (cb.best_epoch, cb.stopped_epoch) == (ref_cb.best_epoch, ref_cb.stopped_epoch)
    assert_same_weights(model, ref_model)


def test_stock_restores_wrong_weights_after_resume(tmp_path, reference):
    """Stock EarlyStopping forgets best and its weights at a resume (here after
    the best epoch): it ends on other weights, and later."""
    ref_logs, ref_model, ref_cb = reference
    at = ref_cb.best_epoch + 1
    logs, model, _ = run(lambda: [keras.callbacks.EarlyStopping(**ES)], tmp_path, "stock_backup", at)
    assert len(logs["loss"]) > len(ref_logs["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), ref_model.get_weights()))


def test_resume_with_no_epoch_left_still_restores_best_weights(tmp_path):
    """Killed after the last epoch's checkpoint, before the end of fit: the
    rerun has no epoch to train, and still ends on the best weights."""
    kw = dict(ES, patience=100)  # never stops
    model, cbs = make_model(), ours(**kw)
    mc = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch:02d}.keras"))
    _fit(model, cbs + [mc])
    assert cbs[0].best_epoch < EPOCHS - 1
    resumed = keras.models.load_model(tmp_path / f"e{EPOCHS:02d}.keras")
    (cb,) = ours(**kw)
    assert rs.restore(tmp_path / f"e{EPOCHS:02d}.keras", cb) == EPOCHS
    _fit(resumed, [cb], initial_epoch=EPOCHS)
    assert_same_weights(resumed, model)


# -- what resets at a new fit, what persists ------------------------------------


def test_continued_fit_in_same_process_persists(reference):
    """fit(epochs=7) then fit(initial_epoch=7): one run, as if never split.
    (Without restore_best_weights: each fit ends by restoring them.)"""
    ref_logs, _, ref_cb = reference
    split = ref_cb.best_epoch + 2
    ref_model = make_model()
    _fit(ref_model, ours(restore_best_weights=False))
    model, (cb,) = make_model(), ours(restore_best_weights=False)
    h1 = _fit(model, [cb], epochs=split)
    h2 = _fit(model, [cb], initial_epoch=split)
    assert h1.history["loss"] + h2.history["loss"] == ref_logs["loss"]
    assert (cb.best_epoch, cb.stopped_epoch) == (ref_cb.best_epoch, ref_cb.stopped_epoch)
    assert_same_weights(model, ref_model)


def test_new_run_from_epoch_zero_resets_and_stopped_epoch_is_per_fit(reference):
    ref_logs, ref_model, ref_cb = reference
    (cb,) = ours()
    _fit(make_model(), [cb])
    assert cb.stopped_epoch == ref_cb.stopped_epoch > 0
    cb.patience = 100  # a second fit that does not stop
    _fit(make_model(), [cb], epochs=2)
    assert cb.stopped_epoch == 0 and cb.best_epoch == 1  # started over
    cb.patience = ES["patience"]
    model = make_model()
    h = _fit(model, [cb])
    assert h.history["loss"] == ref_logs["loss"]
    assert_same_weights(model, ref_model)


def test_lost_best_weights_warn_and_keep_final_weights(reference):
    best = reference[2].best_epoch
    (cb,) = ours()
    _fit(make_model(), [cb], epochs=best + 2)
    saved = cb.get_state()
    assert saved["best_weights"] == 2 and saved["best_epoch"] == best
    (cb2,) = ours()
    cb2.set_state(saved)  # no set_arrays: the arrays did not come along
    model, last = make_model(), LastWeights()
    with pytest.warns(UserWarning, match=rf"counts 2 best-weight arrays \(epoch {best + 1}\) but they were not restored"):
        _fit(model, [cb2, last], initial_epoch=best + 2)
    assert cb2.best_epoch == best  # not overwritten by the first epoch after the resume
    assert_same_weights(model, _Weights(last.weights))


class _Weights:
    def __init__(self, w):
        self.w = w

    def get_weights(self):
        return self.w


# -- the protocol ----------------------------------------------------------------


def test_arrays_round_trip_and_validation():
    (cb,) = ours()
    _fit(make_model(), [cb], epochs=3)
    state, arrays = cb.get_state(), cb.get_arrays()
    assert sorted(arrays) == ["best_weights.0", "best_weights.1"]
    (cb2,) = ours()
    with pytest.raises(ValueError, match=r"Received: 2 best_weights arrays\. Expected 0, as the state counts"):
        cb2.set_arrays(arrays)
    cb2.set_state(state)
    with pytest.raises(ValueError, match=r"^Invalid array key for EarlyStopping\. Received: 'weights\.0'\."):
        cb2.set_arrays({"weights.0": arrays["best_weights.0"]})
    with pytest.raises(ValueError, match=r"Received: best_weights indices \[0, 2\]\. Expected 0\.\.1\."):
        cb2.set_arrays({"best_weights.0": arrays["best_weights.0"], "best_weights.2": arrays["best_weights.1"]})
    cb2.set_arrays(arrays)
    assert cb2.get_state() == state
    assert all(np.array_equal(a, b) for a, b in zip(cb2.best_weights, cb.best_weights))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"best_epoch": -2}, "Invalid value for field `best_epoch` of EarlyStoppingState. Received: best_epoch=-2."),
        ({"best_weights": 1.5}, "Invalid value for field `best_weights` of EarlyStoppingState. Received: best_weights=1.5."),
        ({"best": [1.0]}, "Invalid value for field `best` of EarlyStoppingState. Received: best=[1.0]."),
        ({"version": "1"}, "Invalid value for field `version` of EarlyStoppingState. Received: version='1'."),
    ],
)
def test_set_state_rejects_bad_input_and_changes_nothing(change, message):
    (cb,) = ours()
    before = cb.get_state()
    with pytest.raises(ValueError) as e:
        cb.set_state({**before, **change})
    assert str(e.value).startswith(message)
    assert cb.get_state() == before


def test_not_a_dict():
    with pytest.raises(ValueError, match=r"^Invalid EarlyStoppingState\. Received: list \[1\]\. Expected a dict"):
        rs.EarlyStopping().set_state([1])
