"""Issue 10: `steps_per_epoch` smaller than one pass over a grain
`MapDataset` or `IterDataset`. Keras carries its data iterator from one
epoch to the next: 40 elements, batch 4 (10 batches), steps_per_epoch=6
gives epochs of 6, 4, 6, 4, 6 batches (the pass runs out after 4 and the
next epoch starts a fresh one). A resume (at the last batch of an epoch, at
an epoch boundary inside a pass, mid-epoch of a carried or of a fresh pass)
starts the input where the carried iterator was (a `MapDataset` sliced, an
`IterDataset` from its iterator's state saved at that batch or epoch end):
bitwise the weights, learning rate and optimizer iterations of a run never
interrupted, without the "less than one pass" warning.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

grain = pytest.importorskip("grain")

import resumable_scheduler as rs  # noqa: E402
from tests.support.resume_helpers import (  # noqa: E402
    InterruptAt, assert_same, documented_schedule, make_model, outcome,
)

SRC = np.random.RandomState(0).rand(40, 20).astype("float32")
EPOCHS = 5
LENGTHS = [6, 4, 6, 4, 6]
# The last batch of an epoch, a boundary inside a pass (epoch 1 starts at
# batch 6 of the pass), mid-epoch of a carried-over pass, mid-epoch of a
# fresh pass, the start of a fresh pass.
POINTS = [(0, 5), (1, 0), (1, 2), (3, 3), (2, 4), (4, 0)]
KINDS = ["map", "iter"]


class BatchLog(keras.callbacks.Callback):
    """Records (epoch, batch) for every trained batch. (At the end of a pass
    over a grain input, of unknown length to Keras, the epoch calls
    `on_train_batch_begin` once more and then finds no data: that batch is
    not trained and has no `on_train_batch_end`.)"""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, int]] = []
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append((self.epoch, batch))


def _noise(e, r):
    return e[0] + r.normal(size=20).astype("float32") * 0.01, e[1]


def pipeline(kind):
    """A fresh pipeline object for each run, as a restarted process has."""
    ds = grain.MapDataset.range(40).shuffle(seed=7).map(
        lambda i: (SRC[i], np.full(10, 0.01 * (int(i) % 7), dtype="float32")))
    if kind == "iter":
        return ds.to_iter_dataset().random_map(_noise, seed=3).batch(4)
    return ds.random_map(_noise, seed=3).batch(4)


def run(kind, callbacks, seen=None):
    """Fits 5 epochs; the texts of the warnings it gave go to `seen`."""
    model = make_model()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            model.fit(pipeline(kind), epochs=EPOCHS, steps_per_epoch=6, verbose=0,
                      callbacks=[rs.LearningRateScheduler(documented_schedule), *callbacks])
        finally:
            if seen is not None:
                seen.extend(str(x.message) for x in w)
            partial = [str(x.message) for x in w if "less than one pass" in str(x.message)]
            assert partial == []
    return model


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def reference(kind):
    log = BatchLog()
    model = run(kind, [log])
    return outcome(model), log.rows


def test_keras_carries_the_pass_over(reference):
    _, rows = reference
    assert [sum(1 for e, _ in rows if e == k) for k in range(EPOCHS)] == LENGTHS


@pytest.mark.parametrize("at", POINTS)
def test_resume_inside_a_carried_pass_is_exact(tmp_path, kind, reference, at):
    ref, rows = reference
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(kind, [rs.BackupAndRestore(d, save_freq=1), InterruptAt(*at)])
    log = BatchLog()
    model = run(kind, [rs.BackupAndRestore(d, save_freq=1), log])
    done = sum(LENGTHS[:at[0]]) + at[1]
    assert log.rows == rows[done:]
    got = outcome(model)
    assert got["iterations"] == sum(LENGTHS)
    assert_same(got, ref)


def test_resume_with_epoch_checkpoints(tmp_path, kind, reference):
    ref, rows = reference
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(kind, [rs.BackupAndRestore(d), InterruptAt(2, 2)])
    with pytest.raises(KeyboardInterrupt):  # resumed at the boundary inside a pass
        run(kind, [rs.BackupAndRestore(d), InterruptAt(3, 1)])
    log = BatchLog()
    model = run(kind, [rs.BackupAndRestore(d), log])
    assert log.rows == rows[sum(LENGTHS[:3]):]
    assert_same(outcome(model), ref)


@pytest.mark.parametrize("at", [(1, 0), (1, 2)])
def test_iter_without_an_iterator_state_rereads_the_pass_and_is_exact(tmp_path, monkeypatch, at):
    # Where Keras reads ahead (accelerators), the running grain iterator is
    # not at the trained batch and no state is saved: the resume re-reads
    # the pass up to the position (the batches of earlier epochs too).
    from resumable_scheduler._adapters import keras_grain as kg

    ref = run("iter", [])
    d = os.fspath(tmp_path / "b")
    with monkeypatch.context() as m:
        m.setattr(kg, "running_data_iterator", lambda adapter: None)
        with pytest.raises(KeyboardInterrupt):
            run("iter", [rs.BackupAndRestore(d, save_freq=1), InterruptAt(*at)])
    seen = []
    model = run("iter", [rs.BackupAndRestore(d, save_freq=1)], seen)
    assert [m for m in seen if "grain iterator state" in m] == [
        f"The checkpoint holds no grain iterator state for this IterDataset, so the {6 + at[1]} "
        f"batches of its pass before the resumed one are read again (not trained) to reach "
        f"batch {at[1]} of the epoch. The resume is still exact."]
    assert_same(outcome(model), outcome(ref))
