"""SIGTERM mid-epoch: a clean, fast stop with a checkpoint; nothing lost or repeated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

import resumable_scheduler as rs
from tests.support.soak import CHILD, load_result

GRACE_S = 10.0


def _run(args, **kw):
    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, **kw)


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    backup, out, ref_out = (os.fspath(tmp_path / n) for n in ("backup", "out", "ref"))
    log = os.fspath(tmp_path / "batches.log")
    common = ["--samples", "40", "--epochs", "3", "--save-freq", "epoch"]
    ref = _run([os.fspath(tmp_path / "unused"), ref_out, *common, "--no-backup"])
    assert ref.wait(timeout=300) == 0

    child = _run([backup, out, *common, "--batch-log", log, "--sleep", "0.02"])
    for line in child.stdout:
        if line.strip() == "batch 1 17":  # mid-epoch 1
            break
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    elapsed = time.monotonic() - sent
    assert code == rs.PREEMPTED_EXIT_CODE
    assert elapsed < GRACE_S
    state = rs.read_state(backup)
    assert state["epoch"] == 1 and 18 <= state["batch"] < 40
    stopped_at = state["batch"]

    again = _run([backup, out, *common, "--batch-log", log])
    assert again.wait(timeout=300) == 0
    with open(log) as f:
        rows = [tuple(map(int, line.split())) for line in f]
    # Every batch exactly once, in order: none lost, none repeated.
    assert rows == [(e, b) for e in range(3) for b in range(40)]
    assert (1, stopped_at) in rows and rows.index((1, stopped_at)) == 40 + stopped_at

    got, want = load_result(out), load_result(ref_out)
    assert got["iterations"] == want["iterations"] == 120
    assert got["lr"] == want["lr"]
    assert all(np.array_equal(a, b) for a, b in zip(got["weights"], want["weights"]))
