"""Issue 10, part 1: a resumed `PyDataset` epoch reads only what it trains.

Interrupted at batch 40 of a 50-batch epoch, the resumed epoch calls
`__getitem__` for batches 40-49 of the interrupted epoch's order and for no
other (before: all 50, the first 40 only to be skipped), with and without
`shuffle=True`, and through Keras's `OrderedEnqueuer` with worker threads or
processes; weights, learning rate and optimizer iterations end bitwise equal
to a run never interrupted.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.resume_helpers import BatchLog, InterruptAt, assert_same, make_model, outcome

X = np.random.RandomState(0).rand(100, 20).astype("float32")
Y = np.random.RandomState(1).rand(100, 10).astype("float32")
EPOCHS = 2
AT = (1, 40)


class Served(keras.utils.PyDataset):
    """50 batches of 2 samples; appends each index it serves to `log` (a
    file, so that worker processes record too)."""

    def __init__(self, log, **kw):
        super().__init__(**kw)
        self.log = log

    def __len__(self):
        return 50

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{int(i)}\n")
        return X[2 * i:2 * i + 2], Y[2 * i:2 * i + 2]


def served(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [int(line) for line in f.read().split()]


def run(tmp_path, name, callbacks, shuffle, **kw):
    log = os.fspath(tmp_path / f"{name}.log")
    model = make_model()
    # Built beforehand, so that `fit` does not read a batch to build the
    # loss (a read that, with workers, leaves prefetched batches that stock
    # Keras then trains first: not a deterministic reference).
    model.evaluate(X[:2], Y[:2], verbose=0)
    model.fit(Served(log, **kw), epochs=EPOCHS, shuffle=shuffle, callbacks=callbacks, verbose=0)
    return model, served(log)


MODES = {
    "plain": {},
    "threads": {"workers": 2},
    "processes": {"workers": 2, "use_multiprocessing": True},
}


# With workers and shuffle=True, Keras's OrderedEnqueuer shuffles on its own
# thread, at a moment that races with the main thread's use of `random` (and
# with our capture of the epoch's RNG state): the order is not reproducible
# even by an uninterrupted run, so there is no exact reference to compare
# with (a CI run saw it differ). Those combinations are left out.
CASES = [(mode, shuffle) for mode in MODES for shuffle in (False, True) if not (MODES[mode] and shuffle)]


class EpochReads(keras.callbacks.Callback):
    """The indices served (per the log file) from the first epoch's start to
    the end of its last batch: workers read ahead within the epoch, and
    after it Keras restarts its queue for the next epoch."""

    def __init__(self, log, last):
        super().__init__()
        self.log, self.last, self.start, self.reads = log, last, None, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.start is None:
            self.start = len(served(self.log))

    def on_train_batch_end(self, batch, logs=None):
        if self.reads is None and batch == self.last:
            self.reads = served(self.log)[self.start:]


@pytest.mark.parametrize(("mode", "shuffle"), CASES)
def test_resumed_epoch_reads_only_the_batches_it_trains(tmp_path, mode, shuffle):
    kw = MODES[mode]
    log = BatchLog()
    reference, order = run(tmp_path, "reference", [log], shuffle, **kw)
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "interrupted", [rs.BackupAndRestore(d, save_freq=1), InterruptAt(*AT)], shuffle, **kw)
    resumed_log = BatchLog()
    window = EpochReads(os.fspath(tmp_path / "resumed.log"), 49)
    model, _ = run(tmp_path, "resumed", [rs.BackupAndRestore(d, save_freq=1), resumed_log, window], shuffle, **kw)
    assert resumed_log.rows == [(1, b) for b in range(40, 50)]
    if kw:  # worker threads or processes call __getitem__ in any order
        assert sorted(window.reads) == list(range(40, 50))  # (no shuffle with workers)
    else:
        assert len(order) == 100  # one read per batch without workers: the reference's order
        assert window.reads == order[50 + 40:]
        if not shuffle:
            assert window.reads == list(range(40, 50))
    assert_same(outcome(model), outcome(reference))
