"""A grain-fed training child SIGKILLed mid-epoch (and right after an
epoch's last batch) and restarted ends bit for bit like one never killed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("grain")

from resumable_scheduler import harness  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "grain_child.py")


def test_sigkilled_grain_child_resumes_exactly(tmp_path):
    backup, out, ref = (os.fspath(tmp_path / n) for n in ("backup", "out.npz", "ref.npz"))
    harness.run_until_done([sys.executable, CHILD, "map", backup, ref, "--no-backup"], timeout=300,
                           name="The reference grain child")
    # 6 batches per epoch: kills after batch 3, after the last batch of epoch
    # 0 (before its end is committed) and after batch 4 of epoch 1.
    record = harness.run_until_done(
        [sys.executable, CHILD, "map", backup, out],
        [harness.Kill(at_batch=3), harness.Kill(at_batch=6), harness.Kill(at_batch=11)],
        batches_per_epoch=6, answer="go", timeout=300, name="The grain child")
    assert record.runs == 4
    assert all(k.exit_code == -9 for k in record.kills)
    got, want = np.load(out), np.load(ref)
    assert sorted(got.files) == sorted(want.files)
    for name in want.files:
        assert np.array_equal(got[name], want[name]), name
    assert int(got["iterations"]) == 18
    assert not os.path.exists(backup)
