"""Issue 8, section 2, the batch skip: it belongs to the training epoch of the
fit it was made for.

- A resume that aborts before its first batch leaves the skip behind (Keras
  skips `on_train_end`); a later plain `fit` of the same model trained 2 of 5
  batches.
- `model.evaluate` in a later callback's `on_epoch_begin` consumed the skip:
  the resumed epoch then trained its first batches again, in silence.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.resume_helpers import X, Y, BatchLog, InterruptAt, assert_same, make_model, outcome

EPOCHS = 8


def iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_a_resume_that_aborts_leaves_no_skip_for_a_later_fit_of_the_same_model(tmp_path):
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
                         callbacks=[rs.BackupAndRestore(d, save_freq=1), InterruptAt(6, 3)])
    # The resume arranges to skip 3 batches of epoch 6, then aborts before it
    # starts. The exception is kept alive (as `sys.last_value` would in a
    # notebook), so the aborted fit's objects are not freed.
    model = make_model()
    with pytest.raises(KeyboardInterrupt) as aborted:
        model.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
                  callbacks=[rs.BackupAndRestore(d, save_freq=1), InterruptAt(6, 0)])
    log = BatchLog()
    model.fit(X, Y, epochs=1, batch_size=1, verbose=0, callbacks=[log])
    assert log.rows == [(0, b) for b in range(5)]
    assert aborted.value is not None


class EvaluateAtEpochBegin(keras.callbacks.Callback):
    """Listed after the checkpoint callback: evaluates at every epoch start."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.evaluate(X, Y, batch_size=1, verbose=0)


def test_evaluate_in_a_later_callbacks_epoch_begin_does_not_take_the_skip(tmp_path):
    reference = make_model()
    reference.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0, callbacks=[EvaluateAtEpochBegin()])

    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
                         callbacks=[rs.BackupAndRestore(d, save_freq=1), EvaluateAtEpochBegin(), InterruptAt(6, 3)])
    model, log = make_model(), BatchLog()
    model.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
              callbacks=[rs.BackupAndRestore(d, save_freq=1), EvaluateAtEpochBegin(), log])
    assert log.rows == [(6, 3), (6, 4)] + [(7, b) for b in range(5)]
    assert iterations(model) == EPOCHS * 5
    assert_same(outcome(model), outcome(reference))


def test_predict_in_a_later_callbacks_epoch_begin_does_not_take_the_skip(tmp_path):
    class Predict(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.predict(X, batch_size=1, verbose=0)

    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
                         callbacks=[rs.BackupAndRestore(d, save_freq=1), InterruptAt(6, 3)])
    model, log = make_model(), BatchLog()
    model.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
              callbacks=[rs.BackupAndRestore(d, save_freq=1), Predict(), log])
    assert log.rows[:2] == [(6, 3), (6, 4)]
    assert iterations(model) == EPOCHS * 5
