"""The kill-anywhere soak (quick mode; RS_SOAK_KILLS=N for more, or benchmarks/soak.py),
through resumable_scheduler.harness."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

from tests.support.soak import run_soak


@pytest.mark.slow
def test_sigkill_anywhere_until_done_is_bitwise_equal(tmp_path):
    kills = int(os.environ.get("RS_SOAK_KILLS", "8"))
    # Enough epochs that the run cannot finish before the last kill, however
    # fast the machine: a life lasts at most `window` s and every batch's
    # commit sleeps at least `delay` (the child's DELAY_ENV), 5 batches an epoch.
    delay, window = 0.04, 0.8
    epochs = math.ceil(kills * window / delay / 5) + 8
    tally, got, want = run_soak(os.fspath(tmp_path), kills=kills, seed=1, delay=delay,
                                window=window, epochs=epochs, log=lambda m: None)
    assert tally.kills == kills, tally
    assert tally.runs == kills + 1 and tally.record.unused_kills == 0
    assert all(k.exit_code == -signal.SIGKILL for k in tally.record.kills)
    # Some kills must land inside checkpoint writes (the delay hook widens them).
    assert tally.inside_write >= 1, tally
    assert got["iterations"] == want["iterations"] == 5 * epochs
    # The documented schedule: 0.01 for epochs 0-9, then x exp(-0.1) an epoch.
    assert got["lr"] == want["lr"] and np.isclose(got["lr"], 0.01 * np.exp(-0.1 * (epochs - 10)), rtol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(got["weights"], want["weights"]))
