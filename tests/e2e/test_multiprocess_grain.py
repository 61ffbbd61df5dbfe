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

import numpy as np
import pytest

pytest.importorskip("grain")

from resumable_scheduler import harness  # noqa: E402
from tests.support.multiprocess import (  # noqa: E402
    FULL, SEED, kill_and_finish, result, run_to_end,
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
    # Kill after a random number of batches of each life (4 lives x at most
    # 10 batches never reach the end of the 60).
    plan = harness.random_kills(4 if FULL else 2, random.Random(SEED), after_lines=(2, 10))
    kill_and_finish(os.fspath(tmp_path / "backup"), tmp_path / "out", ARGS, plan, reference, tmp_path)
