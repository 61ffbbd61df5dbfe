"""rs.BackupAndRestore: interruptions by exception resume bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.resume_helpers import (
    FINAL_LR, InterruptAt, BatchLog, X, Y, assert_same, documented_schedule, fit,
    make_model, outcome, run_uninterrupted,
)

POSITIONS = [(0, 0), (0, 3), (4, 1), (9, 4), (10, 0), (12, 3), (14, 2), (14, 4)]


@pytest.fixture(scope="module")
def reference():
    return {s: run_uninterrupted(shuffle=s) for s in (True, False)}


def interrupted_run(tmp_path, at, save_freq, shuffle, dropout=False, log=None):
    d = os.fspath(tmp_path / "backup")
    model = make_model(dropout=dropout)
    with pytest.raises(KeyboardInterrupt):
        fit(model, [rs.BackupAndRestore(d, save_freq=save_freq), rs.LearningRateScheduler(documented_schedule),
                    InterruptAt(*at)], shuffle=shuffle)
    # A new process would rebuild everything from the script: so do we.
    model = make_model(dropout=dropout, seed=0)
    if os.path.exists(d) and any(n.startswith("ckpt-") for n in os.listdir(d)):
        np.random.seed(12345)  # whatever the RNG is now, the backup decides
    extra = [log] if log is not None else []
    fit(model, [rs.LearningRateScheduler(documented_schedule), rs.BackupAndRestore(d, save_freq=save_freq)] + extra,
        shuffle=shuffle)
    assert not os.path.exists(d)  # delete_checkpoint=True
    return outcome(model)


@pytest.mark.parametrize("save_freq", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("at", POSITIONS)
def test_exception_anywhere_resumes_exactly(tmp_path, reference, at, save_freq, shuffle):
    got = interrupted_run(tmp_path, at, save_freq, shuffle)
    assert got["iterations"] == 75
    assert round(got["lr"], 5) == 0.00607 and np.isclose(got["lr"], FINAL_LR)
    assert_same(got, reference[shuffle])


@pytest.mark.parametrize("at", [(3, 0), (7, 2)])
def test_epoch_mode_resumes_exactly(tmp_path, reference, at):
    got = interrupted_run(tmp_path, at, "epoch", True)
    assert_same(got, reference[True])


def test_no_batch_trained_twice_or_lost(tmp_path):
    log = BatchLog()
    interrupted_run(tmp_path, (6, 3), 1, True, log=log)
    # The resumed run starts at the first batch not yet trained.
    assert log.rows[0] == (6, 3)
    assert log.rows == [(6, b) for b in (3, 4)] + [(e, b) for e in range(7, 15) for b in range(5)]


def test_dropout_masks_resume_exactly(tmp_path):
    ref = run_uninterrupted(dropout=True)
    got = interrupted_run(tmp_path, (8, 2), 1, True, dropout=True)
    assert_same(got, ref)


def test_a_resume_that_fails_does_not_skip_batches_of_a_later_fit(tmp_path):
    d = os.fspath(tmp_path / "backup")
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, [rs.BackupAndRestore(d, save_freq=1), InterruptAt(6, 3)])
    # The resume arranges to skip 3 batches, then fails before the epoch starts.
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), [rs.BackupAndRestore(d, save_freq=1), InterruptAt(6, 0)])
    log = BatchLog()
    fit(model, [log], epochs=1)  # an unrelated fit (of a built model) trains every batch
    assert log.rows == [(0, b) for b in range(5)]
