"""Issue 10, part 2: `steps_per_epoch` smaller than one pass over the data.

Keras then carries its data iterator from one epoch to the next: 40 samples,
batch 4, steps_per_epoch=6 gives epochs of 6, 4, 6, 4, 6 batches, and the
second epoch of each pair continues the shuffled order the first one drew. A
resume (at an epoch boundary or mid-epoch, in a fresh or a carried-over pass)
re-draws that pass's order with the RNG of its start and continues where the
interrupted run stopped: bitwise the weights, learning rate and optimizer
iterations of a run never interrupted, without the old "less than one pass"
warning.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.resume_helpers import BatchLog, InterruptAt, assert_same, make_model, outcome

X40 = np.random.RandomState(0).rand(40, 20).astype("float32")
Y40 = np.random.RandomState(1).rand(40, 10).astype("float32")
EPOCHS = 5  # epochs of 6, 4, 6, 4, 6 batches
LENGTHS = [6, 4, 6, 4, 6]
# (epoch, batch) to interrupt at: a boundary inside a pass (epoch 1 starts
# at batch 6 of the pass), mid-epoch of a carried-over pass, mid-epoch of a
# fresh pass, and the boundary where a fresh pass starts.
POINTS = [(1, 0), (1, 2), (3, 3), (2, 4), (4, 0)]


class Served(keras.utils.PyDataset):
    """The 40 samples as 10 batches of 4; records every index it serves."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.served: list[int] = []

    def __len__(self):
        return 10

    def __getitem__(self, i):
        self.served.append(int(i))
        return X40[4 * i:4 * i + 4], Y40[4 * i:4 * i + 4]


def trained(data):
    """What a fit read for training: Keras reads one batch first to build
    the optimizer and metrics (`_symbolic_build`)."""
    return None if data is None else data.served[1:]


def run(kind, callbacks, shuffle=True):
    model = make_model()
    data = Served() if kind == "pydataset" else None
    kw = dict(epochs=EPOCHS, steps_per_epoch=6, shuffle=shuffle, callbacks=callbacks, verbose=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            if data is not None:
                model.fit(data, **kw)
            else:
                model.fit(X40, Y40, batch_size=4, **kw)
        finally:
            partial = [str(x.message) for x in w if "less than one pass" in str(x.message)]
            assert partial == []
    return model, data


@pytest.fixture(scope="module")
def references():
    out = {}
    for kind in ("arrays", "pydataset"):
        for shuffle in (True, False):
            log = BatchLog()
            model, data = run(kind, [log], shuffle)
            out[kind, shuffle] = (outcome(model), trained(data), log.rows)
    return out


def test_keras_carries_the_pass_over(references):
    _, served, rows = references["pydataset", True]
    assert [sum(1 for e, _ in rows if e == k) for k in range(EPOCHS)] == LENGTHS
    # Epochs 0+1 are one pass, 2+3 the next: each a permutation of the 10 batches.
    assert sorted(served[:10]) == list(range(10)) and sorted(served[10:20]) == list(range(10))


@pytest.mark.parametrize("kind", ["arrays", "pydataset"])
@pytest.mark.parametrize("at", POINTS)
def test_resume_inside_a_carried_pass_is_exact(tmp_path, references, kind, at):
    reference, served, rows = references[kind, True]
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(kind, [rs.BackupAndRestore(d, save_freq=1), InterruptAt(*at)])
    log = BatchLog()
    model, data = run(kind, [rs.BackupAndRestore(d, save_freq=1), log])
    done = sum(LENGTHS[:at[0]]) + at[1]
    assert log.rows == rows[done:]
    assert_same(outcome(model), reference)
    if data is not None:  # only the batches trained are read, in the same order
        assert trained(data) == served[done:]


@pytest.mark.parametrize("kind", ["arrays", "pydataset"])
def test_resume_without_shuffle_and_epoch_checkpoints(tmp_path, references, kind):
    reference, served, _ = references[kind, False]
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(kind, [rs.BackupAndRestore(d), InterruptAt(2, 2)], shuffle=False)
    with pytest.raises(KeyboardInterrupt):  # resumed at the boundary inside a pass
        run(kind, [rs.BackupAndRestore(d), InterruptAt(3, 1)], shuffle=False)
    model, data = run(kind, [rs.BackupAndRestore(d)], shuffle=False)
    assert_same(outcome(model), reference)
    if data is not None:
        assert trained(data) == served[sum(LENGTHS[:3]):]


def test_a_changed_shuffle_is_refused_at_a_boundary_inside_a_pass(tmp_path):
    d = os.fspath(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run("arrays", [rs.BackupAndRestore(d), InterruptAt(1, 0)])
    with pytest.raises(ValueError) as e:
        run("arrays", [rs.BackupAndRestore(d)], shuffle=False)
    assert (f"Cannot resume from the checkpoint in backup_dir={d!r} (epoch 1, batch 0): the training input "
            "is not the one it was written with: shuffle=True then, False now.") in str(e.value)
    assert "Rerun with shuffle=True as when the checkpoint was written" in str(e.value)
