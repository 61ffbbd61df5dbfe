"""Two JAX processes training together on grain input with
rs.BackupAndRestore (issue 10): each process feeds its own shard of a
shuffled `grain.MapDataset` with a random map (`--grain`); both processes,
SIGKILLed at a random batch and restarted, resume mid-run and end bitwise
equal to a two-process grain run never killed, in both processes.

Quick mode (default, CI): two kills. RS_FULL=1: four.
Set RS_MP_SEED to replay a run (the seed is printed on failure).
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest

pytest.importorskip("grain")

import resumable_scheduler as rs  # noqa: E402
from resumable_scheduler import harness  # noqa: E402
from tests.support.multiprocess import (  # noqa: E402
    BATCHES, FULL, PER_EPOCH, SEED, TIMEOUT, assert_same, batch_index, launch, result, run_to_end,
)

pytestmark = pytest.mark.slow

ARGS = ("--grain", "--backup", "--save-freq", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Both processes' result of a two-process grain run never killed."""
    base = tmp_path_factory.mktemp("mp_grain_ref")
    run_to_end(base / "unused", base / "out", "--grain", "--no-ckpt")
    ref = result(base / "out")
    assert ref[0]["lr"] == pytest.approx(0.01 * np.exp(-0.5), rel=1e-6)
    # The two processes read different shards and still hold one model.
    assert all(np.array_equal(a, b) for a, b in zip(ref[0]["weights"], ref[1]["weights"]))
    return ref


def test_both_processes_sigkilled_resume_exactly_with_grain(tmp_path, reference):
    backup_dir, out = os.fspath(tmp_path / "backup"), tmp_path / "out"
    # Kill after a random number of batches of each life (4 lives x at most
    # 10 batches never reach the end of the 60).
    plan = harness.random_kills(4 if FULL else 2, random.Random(SEED), after_lines=(2, 10))
    floor = 0  # every life resumes at or past this batch
    for k, kill in enumerate(plan):
        with launch(backup_dir, out, *ARGS, logs=tmp_path, run=k + 1) as group:
            assert group.watch(kill, timeout=TIMEOUT), f"seed {SEED}, life {k}: the run ended first"
            first = group[0].reported[0]
            start = batch_index(first)
            assert start >= floor, f"seed {SEED}, life {k}: restarted at {first}, expected batch >= {floor}"
            assert group.stop(kill.signal) == [-signal.SIGKILL] * 2, f"seed {SEED}, life {k}"
        # As in test_multiprocess_backup.py: the last batch process 0
        # printed is committed as "next", except an epoch's last batch (saved
        # at the epoch's end, after the print).
        last = batch_index(group[0].progress)
        assert last >= start + kill.after_lines - 1
        floor = last - 1 if last % PER_EPOCH == PER_EPOCH - 1 else last
    children = run_to_end(backup_dir, out, *ARGS, logs=tmp_path, run=len(plan) + 1)
    first = [c.reported[0] for c in children]
    # Both processes resumed at the same batch, from the checkpoint (not
    # from the start: the test cannot pass by training everything again).
    assert first[0] == first[1]
    assert batch_index(first[0]) >= floor > 0, f"seed {SEED}: {first[0]}"
    assert children[0].lines == BATCHES - batch_index(first[0])
    assert_same(result(out), reference)
    with pytest.raises(FileNotFoundError):
        rs.read_state(backup_dir)
