"""`rs.ReduceLROnPlateau` / `rs.EarlyStopping`: `on_train_begin` resets the
monitor state as Keras does, also when the hooks are driven by hand, and the
first epoch still decides what carries on (resume is guarded end to end by
tests/integration/test_plateau.py and tests/integration/test_early_stopping.py)."""

import keras
import pytest

import resumable_scheduler as rs


def model():
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.1), loss="mse")
    return m


def plateau():
    cb = rs.ReduceLROnPlateau(monitor="loss", patience=1, cooldown=2)
    cb.set_model(model())
    return cb


def stopper():
    cb = rs.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    cb.set_model(model())
    return cb


def drive_plateau(cb, epochs, start=0):
    for e in range(start, start + epochs):
        cb.on_epoch_begin(e)
        cb.on_epoch_end(e, {"loss": 1.0})


@pytest.mark.parametrize("make", [plateau, stopper])
def test_on_train_begin_resets_like_keras(make):
    cb = make()
    cb.on_train_begin()
    cb.best, cb.wait = 0.5, 3
    cb.on_train_begin()
    assert cb.best is None and cb.wait == 0 and cb.state.epoch == 0


def test_a_restored_state_survives_on_train_begin():
    cb = plateau()
    saved = {**cb.get_state(), "epoch": 4, "wait": 1, "best": 0.25, "cooldown_counter": 1}
    cb.set_state(saved)
    cb.on_train_begin()
    assert cb.best is None  # reset, as Keras does...
    cb.on_epoch_begin(4)  # ...until the first epoch: the restore carries on
    assert (cb.best, cb.wait, cb.cooldown_counter, cb.state.epoch) == (0.25, 1, 1, 4)


def test_a_restore_during_on_train_begin_carries_on():
    """A backup loaded by a checkpoint callback listed after us."""
    cb = stopper()
    cb.on_train_begin()
    cb.set_state({**cb.get_state(), "epoch": 2, "wait": 2, "best": 0.5, "best_epoch": 1})
    cb.on_epoch_begin(2)
    assert (cb.best, cb.wait, cb.best_epoch, cb.state.epoch) == (0.5, 2, 1, 2)


def test_a_continued_fit_gets_its_state_back_and_a_new_run_does_not():
    cb = plateau()
    cb.on_train_begin()
    drive_plateau(cb, 3)
    cb.on_train_end()
    before = cb.state
    assert before.epoch == 3 and before.best == 1.0
    cb.on_train_begin()  # initial_epoch=3, same process
    assert cb.best is None
    cb.on_epoch_begin(3)
    assert cb.state == before
    cb.on_epoch_end(3, {"loss": 1.0})
    cb.on_train_end()

    cb.on_train_begin()  # a new run, from epoch 0
    cb.on_epoch_begin(0)
    assert cb.state.epoch == 0 and cb.best is None and cb.wait == 0


def test_hand_driven_epoch_ends_without_epoch_begins():
    """Keras's own tests call on_epoch_end alone after on_train_begin."""
    cb = stopper()
    cb.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.8]):
        cb.on_epoch_end(epoch, {"loss": loss})
        if cb.model.stop_training:
            break
    assert cb.stopped_epoch == 4 and cb.best_epoch == 1
    cb.on_train_end()
    assert cb.state.epoch == 5 and cb.state.best_weights == 2


def test_no_epoch_left_to_run_keeps_the_state():
    """A fit resumed at or past `epochs` runs no epoch: the state set aside
    at on_train_begin comes back at on_train_end."""
    cb = stopper()
    cb.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5]):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"loss": loss})
    cb.on_train_end()
    cb.on_train_begin()
    cb.on_train_end()
    assert (cb.best, cb.best_epoch, cb.state.epoch) == (0.5, 1, 2)
