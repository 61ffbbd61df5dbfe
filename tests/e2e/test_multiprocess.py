"""Two JAX processes training together with rs.OrbaxCheckpoint: SIGKILLed and
restarted, or SIGTERMed, they end exactly where an uninterrupted run ends.

Quick mode (default, CI): one random double SIGKILL and one SIGTERM.
RS_FULL=1: four SIGKILLs at random batches, and SIGTERM to each process.
Set RS_MP_SEED to replay a run (the seed is printed on failure).
"""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import harness
from tests.support.multiprocess import (
    BATCHES, FULL, PER_EPOCH, SEED, TIMEOUT, assert_same, batch_index, launch, result, run_to_end, saved_position,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp_ref")
    run_to_end(base / "unused", base / "out", "--no-ckpt")
    ref = result(base / "out")
    assert ref[0]["lr"] == pytest.approx(0.01 * np.exp(-0.5), rel=1e-6)
    return ref


def test_both_processes_sigkilled_at_random_batches_resume_exactly(tmp_path, reference):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    # Kill after a random number of batches of each run (4 kills x <= 12
    # batches never reach the end of the 60).
    plan = harness.random_kills(4 if FULL else 1, random.Random(SEED), after_lines=(1, 12))
    for k, kill in enumerate(plan):
        with launch(ckpt, out, "--save-freq", "3", logs=tmp_path, run=k + 1) as group:
            assert group.watch(kill, timeout=TIMEOUT), f"seed {SEED}, kill {k}: the run ended first"
            assert group.stop(kill.signal) == [-signal.SIGKILL] * 2, f"seed {SEED}, kill {k}"
    children = run_to_end(ckpt, out, "--save-freq", "3", logs=tmp_path, run=len(plan) + 1)
    assert children[0].reported == children[1].reported or (
        children[0].output[-1:] == children[1].output[-1:] == ["done"])
    assert_same(result(out), reference)


@pytest.mark.parametrize("target", [0, 1] if FULL else [1])
def test_sigterm_to_one_process_saves_one_agreed_step_and_stops_both(tmp_path, reference, target):
    rng = random.Random(SEED + target)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    at = rng.randrange(5, BATCHES - 10)
    # SIGTERM to process `target` once process 0 reports batch `at`.
    sigterm = harness.Kill(at_batch=at + 1, signal=signal.SIGTERM, grace=60)
    with launch(ckpt, out, "--save-freq", "epoch", "--sleep", "0.05", logs=tmp_path) as group:
        assert group.watch(sigterm, batches_per_epoch=PER_EPOCH, timeout=TIMEOUT), f"seed {SEED}"
        assert batch_index(group[0].progress) == at
        sent = time.monotonic()
        codes = group.stop(sigterm.signal, sigterm.grace, only=target)
        assert time.monotonic() - sent < 20
        assert codes == [rs.PREEMPTED_EXIT_CODE] * 2, f"seed {SEED}: {codes}\n{group.stderr_tails()}"
        # Both stopped after the same batch, and that is the saved step.
        last = [c.progress for c in group]
    assert last[0] == last[1]
    state = rs.read_state(os.fspath(ckpt))
    assert (state["epoch"], state["batch"]) == saved_position(last[0])
    assert state["step"] == batch_index(last[0]) + 1

    run_to_end(ckpt, out, "--save-freq", "epoch", logs=tmp_path, run=2)
    assert_same(result(out), reference)
