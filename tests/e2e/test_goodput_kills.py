"""A run SIGKILLed 3 times and SIGTERMed once, and what its checkpoint says
of it (issue 11).

The demo's child (the documented example, `rs.BackupAndRestore(save_freq=1)`,
a `model.save` of the finished model) in real processes, killed with real
signals by `resumable_scheduler.harness`. Counts, positions and sums are
asserted, never durations, so a busy machine cannot make it flake.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import cli, demo, harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ("startup_s", "restart_s", "productive_s", "blocked_save_s", "lost_work_bound_s", "downtime_s")
#: Batches done in all when each run is stopped: 3 SIGKILLs, then a SIGTERM.
PLAN = [(17, signal.SIGKILL), (31, signal.SIGKILL), (44, signal.SIGTERM), (62, signal.SIGKILL)]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    workdir = os.fspath(tmp_path_factory.mktemp("goodput"))
    backup_dir = os.path.join(workdir, "backup")
    kills = [harness.Kill(at_batch=b, signal=s, grace=60) for b, s in PLAN]
    checkpoints = []

    def after_kill(kill):
        checkpoints.append(harness.backup_position(backup_dir))

    record = harness.run_until_done(
        demo._child_command(workdir, "rs"), kills, batches_per_epoch=demo.BATCHES_PER_EPOCH,
        env=demo._child_env(), log_dir=workdir, timeout=600, after_kill=after_kill,
    )
    return workdir, record, checkpoints


def test_four_interruptions_with_their_causes_and_positions(interrupted_run):
    workdir, record, checkpoints = interrupted_run
    assert [k.exit_code for k in record.kills] == [-9, -9, rs.PREEMPTED_EXIT_CODE, -9]
    report = rs.goodput(os.path.join(workdir, demo.FINAL_MODEL))
    got = report["interruptions"]
    assert [i["cause"] for i in got] == ["killed", "killed", "signal", "killed"]
    # Each is where the next run resumed: the checkpoint left behind.
    assert [(i["epoch"], i["batch"]) for i in got] == checkpoints
    # The SIGTERMed run checkpointed where it stopped, at or after the batch
    # it was told at (44 done: epoch 8, batch 4).
    assert tuple(checkpoints[2]) >= divmod(PLAN[2][0], demo.BATCHES_PER_EPOCH)
    assert report["interruptions_by_cause"] == {"killed": 3, "signal": 1, "exception": 0}
    assert [(r["epoch"], r["batch"]) for r in report["resumes"]] == checkpoints
    assert report["segments"] == 5 and report["running"] is False


def test_productive_steps_equal_the_uninterrupted_runs_and_the_times_add_up(interrupted_run):
    workdir, _, _ = interrupted_run
    report = rs.goodput(os.path.join(workdir, demo.FINAL_MODEL))
    assert report["productive_steps"] == demo.TOTAL_BATCHES == 75
    assert report["redone_steps"] == 0  # exact resume
    assert sum(report[k] for k in PARTS) == pytest.approx(report["wall_s"], rel=1e-9, abs=1e-6)
    assert all(report[k] >= 0 for k in PARTS)
    # Lost work is bounded only after the three kills, not after the SIGTERM.
    assert report["lost_work_bound_s"] > 0
    with open(os.path.join(workdir, demo.RESULT_FILE), encoding="utf-8") as f:
        assert json.load(f)["iterations"] == 75


def test_inspect_prints_the_summary_and_plots_the_resumes(interrupted_run, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    workdir, _, checkpoints = interrupted_run
    path = os.path.join(workdir, demo.FINAL_MODEL)
    png = os.fspath(tmp_path / "run.png")
    assert cli.main(["inspect", path, "--plot", png]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\ninterruptions +4 \(killed 3, signal 1, exception 0\)\n", text), text
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    data = json.loads(Image.open(png).text["resumable_scheduler"])
    epochs = [e + b / demo.BATCHES_PER_EPOCH for e, b in checkpoints]
    assert np.allclose(data["resume_epochs"], epochs)
    assert cli.main(["inspect", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["goodput"]["productive_steps"] == 75


def test_an_exception_that_ends_the_process_is_recorded_as_one(tmp_path):
    # A bug raises out of fit and the script dies with a traceback; the
    # rerun (without the bug) finishes. The dying process amends its newest
    # checkpoint to say how it ended, so the rerun does not count a kill.
    script = os.path.join(ROOT, "tests", "support", "child_train.py")
    backup, out, final = (os.fspath(tmp_path / n) for n in ("backup", "out", "final.keras"))
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    first = subprocess.run([sys.executable, script, backup, out, "--raise-at", "6,3"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1 and "RuntimeError: a bug at epoch 6, batch 3" in first.stderr
    assert not re.search(r"(?m)^Exception ignored|Could not record", first.stderr), first.stderr
    second = subprocess.run([sys.executable, script, backup, out, "--save-model", final],
                            env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    report = rs.goodput(final)
    assert [(i["cause"], i["epoch"], i["batch"]) for i in report["interruptions"]] == [("exception", 6, 3)]
    assert report["productive_steps"] == 75 and report["redone_steps"] == 0
