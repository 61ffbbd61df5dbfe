"""What the two-process kill tests share (tests/e2e/test_multiprocess.py for
rs.OrbaxCheckpoint, tests/e2e/test_multiprocess_backup.py for
rs.BackupAndRestore): one run of tests/support/multiprocess_child.py in two
JAX processes, as a `resumable_scheduler.harness.ChildGroup`, and its result.

The run: 16 samples, 8 per process, 2 per process per batch: 4 batches an
epoch, 15 epochs, 60 batches in all.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys

import numpy as np

from resumable_scheduler import harness

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_child.py")
FULL = os.environ.get("RS_FULL") == "1"
#: Set RS_MP_SEED to replay a run (the tests print the seed on failure).
SEED = int(os.environ.get("RS_MP_SEED", random.randrange(1 << 30)))
COMMON = ["--processes", "2", "--samples", "16", "--batch-size", "2", "--epochs", "15"]
PER_EPOCH = 4
BATCHES = 60
#: Seconds one run of the two processes may take.
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(directory, out, *extra, logs=None, run: int = 1) -> harness.ChildGroup:
    """Starts both processes of one run (run `run`, for the stderr logs'
    names: `logs/run{run}-process{i}.log`; temporary files without `logs`)."""
    port = free_port()
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = [[sys.executable, CHILD, os.fspath(directory), os.fspath(out), *COMMON,
                 "--process-id", str(i), "--port", str(port), *extra] for i in range(2)]
    paths = [os.path.join(logs, f"run{run}-process{i}.log") for i in range(2)] if logs else None
    return harness.ChildGroup(commands, env=env, stderr_paths=paths, run=run)


def run_to_end(directory, out, *extra, logs=None, run: int = 1) -> list[harness.Child]:
    """One run of both processes, left to finish; fails (with their stderr)
    unless both exit 0. Returns the two (closed) children, output read."""
    with launch(directory, out, *extra, logs=logs, run=run) as group:
        codes = group.finish(TIMEOUT)
        assert codes == [0, 0], f"seed {SEED}: exit statuses {codes}\n{group.stderr_tails()}"
        return list(group)


def result(out) -> list[dict]:
    """Both processes' result files: lr, iterations and the weights."""
    res = []
    for i in range(2):
        with open(os.path.join(out, f"result-{i}.json")) as f:
            r = json.load(f)
        with np.load(os.path.join(out, f"weights-{i}.npz"), allow_pickle=False) as z:
            r["weights"] = [z[f"arr_{k}"] for k in range(len(z.files))]
        res.append(r)
    return res


def assert_same(got, ref) -> None:
    """Both processes trained all 60 batches and hold the reference's
    weights bit for bit."""
    for g, r in zip(got, ref):
        assert g["lr"] == r["lr"], f"seed {SEED}"
        assert g["iterations"] == r["iterations"] == BATCHES, f"seed {SEED}"
        assert len(g["weights"]) == len(r["weights"])
        for a, b in zip(g["weights"], r["weights"]):
            assert np.isfinite(a).all()
            assert np.array_equal(a, b), f"seed {SEED}"


def batch_index(p: harness.Progress) -> int:
    """`batch E B` -> the batch's index in the run (from 0)."""
    return p.batches_done(PER_EPOCH) - 1


def saved_position(p: harness.Progress) -> tuple[int, int]:
    """The `(epoch, batch)` a checkpoint saved right after batch `p` names:
    the batch after it."""
    assert p.batch is not None
    return (p.epoch, p.batch + 1) if p.batch < PER_EPOCH - 1 else (p.epoch + 1, 0)


def kill_and_finish(backup_dir: str, out, args, plan, reference, logs, first_life=None) -> None:
    """Runs both processes of one `rs.BackupAndRestore` run (`args`), kills
    both at each `Kill` of `plan`, then runs it to the end, and checks that
    every life resumed at or past the last batch committed before its kill,
    that the last one resumed mid-run (not from the start: the test cannot
    pass by training everything again) at the same batch in both processes,
    that both end as `reference`, and that the finished run deleted its
    backup. `first_life(group)` runs once the first life has trained."""
    import signal

    import pytest

    import resumable_scheduler as rs

    floor = 0  # every life resumes at or past this batch
    for k, kill in enumerate(plan):
        with launch(backup_dir, out, *args, logs=logs, run=k + 1) as group:
            assert group.watch(kill, timeout=TIMEOUT), f"seed {SEED}, life {k}: the run ended first"
            first = group[0].reported[0]
            start = batch_index(first)
            assert start >= floor, f"seed {SEED}, life {k}: restarted at {first}, expected batch >= {floor}"
            if k == 0 and first_life is not None:
                first_life(group)
            assert group.stop(kill.signal) == [-signal.SIGKILL] * 2, f"seed {SEED}, life {k}"
        # `last`: the last batch process 0 printed before it died (at or past
        # the kill's trigger, `start + after_lines - 1`; the run goes on
        # while the test looks at the lock). It was printed after its save
        # point, which waits for the write of the one before: "batch `last`
        # is next" is committed. The last batch of an epoch saves at the
        # epoch's end, after the print.
        last = batch_index(group[0].progress)
        assert last >= start + kill.after_lines - 1
        floor = last - 1 if last % PER_EPOCH == PER_EPOCH - 1 else last
    children = run_to_end(backup_dir, out, *args, logs=logs, run=len(plan) + 1)
    first = [c.reported[0] for c in children]
    assert first[0] == first[1]
    assert batch_index(first[0]) >= floor > 0, f"seed {SEED}: {first[0]}"
    assert children[0].lines == BATCHES - batch_index(first[0])
    assert_same(result(out), reference)
    # The finished run deleted its backup (process 0 did).
    with pytest.raises(FileNotFoundError):
        rs.read_state(backup_dir)
