"""rs.BackupAndRestore under bad conditions: corruption, stale temporaries,
a second process, an unwritable directory, bad arguments."""

from __future__ import annotations

import os
import re
import signal
import sys

import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import harness
from tests.support.resume_helpers import (
    BatchLog, InterruptAt, assert_same, documented_schedule, fit, make_model, outcome, run_uninterrupted,
)
from tests.support.soak import CHILD


def _interrupt(d, at, **kw):
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, [rs.BackupAndRestore(d, **kw), rs.LearningRateScheduler(documented_schedule), InterruptAt(*at)])


def _resume(d, **kw):
    model = make_model()
    fit(model, [rs.BackupAndRestore(d, **kw), rs.LearningRateScheduler(documented_schedule)])
    return outcome(model)


def _ckpts(d):
    return sorted(n for n in os.listdir(d) if n.startswith("ckpt-"))


def _truncate_newest(d):
    newest = os.path.join(d, _ckpts(d)[-1])
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    return newest


def test_truncated_newest_falls_back_to_previous_with_double_checkpoint(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (6, 2), save_freq=1, double_checkpoint=True)
    assert len(_ckpts(d)) == 2
    newest = _truncate_newest(d)
    with pytest.warns(UserWarning, match=re.escape(newest)):
        got = _resume(d, save_freq=1, double_checkpoint=True)
    # Falling back one batch loses nothing: the run is still exact.
    assert_same(got, run_uninterrupted())


def test_truncated_newest_without_fallback_raises_and_keeps_files(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (6, 2), save_freq=1)
    assert len(_ckpts(d)) == 1
    newest = _truncate_newest(d)
    before = sorted(os.listdir(d))
    model = make_model()
    with pytest.raises(ValueError) as e:
        fit(model, [rs.BackupAndRestore(d, save_freq=1)])
    msg = str(e.value)
    assert newest in msg and "truncated or garbled" in msg
    assert f"To start training over from scratch, delete {d!r}" in msg
    assert sorted(os.listdir(d)) == before  # nothing on disk was lost


def test_garbled_newest_is_detected_by_its_checksum(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (3, 1), save_freq=2)
    newest = os.path.join(d, _ckpts(d)[-1])
    with open(newest, "r+b") as f:  # flip bytes in the middle: still valid HDF5
        f.seek(os.path.getsize(newest) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=re.escape(newest) + ".*truncated or garbled"):
        fit(make_model(), [rs.BackupAndRestore(d, save_freq=2)])


def test_backup_file_is_a_plain_keras_weights_file(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (4, 2), save_freq=1)
    model = make_model()
    model.load_weights(os.path.join(d, _ckpts(d)[-1]))
    assert int(np.asarray(model.optimizer.iterations)) == 22


def test_stale_temporary_is_removed_with_warning(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (5, 3), save_freq=1)
    stale = os.path.join(d, "ckpt-00000099.tmp-deadbeef.weights.h5")
    with open(stale, "wb") as f:
        f.write(b"half a file")
    with pytest.warns(UserWarning, match="ckpt-00000099.tmp-deadbeef"):
        got = _resume(d, save_freq=1)
    assert not os.path.exists(stale)
    assert_same(got, run_uninterrupted())


def test_second_process_is_refused_and_dead_lock_does_not_block(tmp_path):
    d = os.fspath(tmp_path / "b")
    with harness.Child([sys.executable, CHILD, d, os.fspath(tmp_path / "o"), "--sleep", "0.2",
                        "--save-freq", "1"]) as child:
        # The save after batch 1 waits for the (background) write of batch
        # 0's: a checkpoint is committed once batch 1 is reported.
        child.wait_for(lambda p: (p.epoch, p.batch) == (0, 1), timeout=300)
        with pytest.raises(RuntimeError, match=re.escape(f"Another process is training with backup_dir={d!r}")):
            fit(make_model(), [rs.BackupAndRestore(d, save_freq=1)])
        code, _, _ = child.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    # The dead process's lock does not block; training resumes from its backup.
    state = rs.read_state(d)
    assert state["epoch"] == 0 and state["batch"] >= 1
    model = make_model()
    fit(model, [rs.BackupAndRestore(d, save_freq=1)], epochs=1)
    assert int(np.asarray(model.optimizer.iterations)) == 5


def test_unwritable_backup_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    d = os.fspath(blocker / "backup")
    with pytest.raises(OSError, match=re.escape(f"Cannot use backup_dir={d!r}")):
        fit(make_model(), [rs.BackupAndRestore(d)])
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # Keras's own sentence first, then ours.
        ({"backup_dir": ""}, "Empty `backup_dir` argument passed. Received: backup_dir=''. Expected a non-empty path to a directory used only for this run's checkpoints."),
        ({"backup_dir": None}, "Empty `backup_dir` argument passed. Received: backup_dir=None. Expected a non-empty path to a directory used only for this run's checkpoints."),
        ({"backup_dir": 3}, "Invalid value for argument `backup_dir`. Received: backup_dir=3 of type int. Expected a non-empty path (str or os.PathLike)."),
        ({"backup_dir": "x", "save_freq": 3.5}, "Invalid value for argument `save_freq`. Received: save_freq=3.5. Expected either 'epoch' or an integer value."),
        ({"backup_dir": "x", "save_freq": 0}, "Invalid value for argument `save_freq`. Received: save_freq=0. Expected either 'epoch' or an integer value."),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as e:
        rs.BackupAndRestore(**kwargs)
    assert str(e.value) == message


def test_read_state_understands_backup_dir(tmp_path):
    d = os.fspath(tmp_path / "b")
    _interrupt(d, (12, 3), save_freq=1)
    s = rs.read_state(d)
    assert (s["epoch"], s["batch"], s["step"]) == (12, 3, 63)
    assert len(s["history"]) == 13 and s["learning_rate"] == s["history"][12]
    assert "LearningRateScheduler" in s["callbacks"]


def test_switching_from_stock_backup_and_restore_continues_its_backup(tmp_path):
    # A run started with stock keras.callbacks.BackupAndRestore, interrupted;
    # the user switches the import to rs and reruns: it continues, never restarts.
    import keras

    d = os.fspath(tmp_path / "b")
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, [keras.callbacks.BackupAndRestore(d), rs.LearningRateScheduler(documented_schedule),
                    InterruptAt(12, 0)], shuffle=False)
    model = make_model()
    log = BatchLog()
    with pytest.warns(UserWarning, match=re.escape(f"Resuming from the stock keras.callbacks.BackupAndRestore backup in {d!r} at epoch 12")):
        fit(model, [rs.BackupAndRestore(d), rs.LearningRateScheduler(documented_schedule), log], shuffle=False)
    assert log.rows[0] == (12, 0) and len(log.rows) == 15
    got = outcome(model)
    assert got["iterations"] == 75 and round(got["lr"], 5) == 0.00607
    assert_same(got, run_uninterrupted(shuffle=False))
