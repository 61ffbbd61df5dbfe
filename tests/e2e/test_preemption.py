"""SIGTERM mid-epoch: a clean, fast stop with a checkpoint; nothing lost or repeated."""

from __future__ import annotations

import os
import signal

import numpy as np

import resumable_scheduler as rs
from resumable_scheduler import harness
from tests.support.soak import child_command, load_result

GRACE_S = 10.0
BATCHES = 40  # per epoch (--samples 40, batch_size 1)


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    backup, out, ref_out = (os.fspath(tmp_path / n) for n in ("backup", "out", "ref"))
    log = os.fspath(tmp_path / "batches.log")
    common = ["--samples", str(BATCHES), "--epochs", "3", "--save-freq", "epoch"]
    harness.run_until_done(child_command(os.fspath(tmp_path / "unused"), ref_out, *common, "--no-backup"),
                           timeout=300)

    def command(run):
        # The first run is slowed down so the SIGTERM lands mid-epoch.
        return child_command(backup, out, *common, "--batch-log", log, *(["--sleep", "0.02"] if run == 1 else []))

    def after_kill(kill):
        kill.info["state"] = rs.read_state(backup)

    # SIGTERM once the child reports batch 17 of epoch 1 (58 batches done).
    sigterm = harness.Kill(at_batch=BATCHES + 17 + 1, signal=signal.SIGTERM, grace=60)
    record = harness.run_until_done(command, [sigterm], batches_per_epoch=BATCHES, timeout=600,
                                    after_kill=after_kill)
    (kill,) = record.kills
    assert kill.progress == harness.Progress(1, 17)
    assert kill.exit_code == rs.PREEMPTED_EXIT_CODE and not kill.escalated
    assert kill.exit_seconds < GRACE_S
    state = kill.info["state"]
    assert state["epoch"] == 1 and 18 <= state["batch"] < BATCHES
    stopped_at = state["batch"]
    assert record.runs == 2

    with open(log) as f:
        rows = [tuple(map(int, line.split())) for line in f]
    # Every batch exactly once, in order: none lost, none repeated.
    assert rows == [(e, b) for e in range(3) for b in range(BATCHES)]
    assert (1, stopped_at) in rows and rows.index((1, stopped_at)) == BATCHES + stopped_at

    got, want = load_result(out), load_result(ref_out)
    assert got["iterations"] == want["iterations"] == 120
    assert got["lr"] == want["lr"]
    assert all(np.array_equal(a, b) for a, b in zip(got["weights"], want["weights"]))
