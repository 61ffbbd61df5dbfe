"""resumable_scheduler.tracker: the one owner of a fit's training position."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from resumable_scheduler.tracker import StateTracker


def run_epoch(tracker, epoch, steps, reporters=2, spe=1, stop_after=None):
    """What `fit` makes `reporters` resumable callbacks report for one epoch
    (each hook called once per callback, as Keras's CallbackList does)."""
    for _ in range(reporters):
        tracker.note_epoch_begin(epoch)
    start = tracker.done
    for begin in range(start, steps, spe):
        end = min(begin + spe, steps) - 1
        # Callbacks report at batch begin (as rs.LearningRateScheduler does)
        # or at batch end (as the checkpoint callbacks do); a sole one, both.
        for r in range(reporters):
            if r % 2 == 0:
                tracker.note_batch_begin(begin, spe)
        for r in range(reporters):
            if r % 2 == 1 or reporters == 1:
                tracker.note_batch_end(end)
        if stop_after is not None and end + 1 >= stop_after:
            break
    for _ in range(reporters):
        tracker.note_epoch_end(epoch)


@pytest.mark.parametrize(("reporters", "spe"), list(itertools.product([1, 2, 3], [1, 2])))
def test_whole_epochs_end_at_the_next_epochs_first_batch(reporters, spe):
    t = StateTracker()
    t.begin_fit({"steps": 4})
    for epoch in range(3):
        run_epoch(t, epoch, 4, reporters, spe)
        assert (t.epoch, t.batch) == (epoch + 1, 0)
        assert (t.training_epoch, t.done) == (epoch, 4)


def test_a_preempted_epoch_keeps_its_mid_epoch_position_through_its_end():
    t = StateTracker()
    t.begin_fit({"steps": 5})
    run_epoch(t, 0, 5)
    run_epoch(t, 1, 5, stop_after=3)  # fit stopped after batch 2 (stop_training)
    assert (t.epoch, t.batch, t.done) == (1, 3, 3)


def test_a_restored_position_is_where_its_epoch_starts_and_counting_goes_on():
    t = StateTracker()
    t.begin_fit({"steps": 5})
    t.set_position(2, 3)  # a mid-epoch checkpoint was restored
    t.note_epoch_begin(2)
    t.note_epoch_begin(2)  # a second callback reports the same epoch: nothing changes
    assert (t.epoch, t.batch, t.done) == (2, 3, 3)
    t.note_batch_begin(3)
    assert (t.epoch, t.batch) == (2, 4)
    t.note_batch_end(4)
    assert (t.epoch, t.batch) == (3, 0)  # the epoch's last batch: the next one is next
    # Another epoch starting resets the batch, whatever was restored.
    t.set_position(5, 2)
    t.note_epoch_begin(6)
    assert (t.epoch, t.batch, t.done) == (6, 0, 0)


def test_without_a_known_epoch_length_the_epoch_end_moves_the_position():
    t = StateTracker()
    t.begin_fit({"steps": None})
    t.note_epoch_begin(0)
    for b in range(7):
        t.note_batch_begin(b)
    assert (t.epoch, t.batch) == (0, 7)
    t.note_epoch_end(0)
    assert (t.epoch, t.batch) == (1, 0)


def test_the_resume_mixin_reads_its_position_from_the_models_tracker(tmp_path):
    import keras

    import resumable_scheduler as rs
    from resumable_scheduler.tracker import tracker_for

    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((backup._epoch, backup._batch, tracker_for(self.model).epoch, tracker_for(self.model).batch))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    backup = rs.BackupAndRestore(str(tmp_path / "b"), save_freq=2)
    x, y = np.ones((6, 2), "float32"), np.zeros((6, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[backup, Probe()])
    assert seen == [(0, 1, 0, 1), (0, 2, 0, 2), (0, 3, 1, 0), (1, 1, 1, 1), (1, 2, 1, 2), (1, 3, 2, 0)]
