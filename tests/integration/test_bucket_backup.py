"""`rs.BackupAndRestore` with `backup_dir` in a bucket (issue 9, section 2).

Real servers on 127.0.0.1 (moto's S3 server and fake-gcs-server, started by
the `bucket` fixture of `tests/support/servers.py`), real `fit`, real child
processes killed with SIGKILL. Every test runs once per server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import cli
from tests.support.resume_helpers import (
    InterruptAt,
    assert_same,
    documented_schedule,
    fit,
    make_model,
    outcome,
    run_uninterrupted,
)
from tests.support.soak import run_soak

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def callbacks(url, *extra, **kw):
    return [rs.BackupAndRestore(url, **kw), rs.LearningRateScheduler(documented_schedule), *extra]


@pytest.mark.parametrize("save_freq, at", [(1, (12, 3)), ("epoch", (6, 0))])
def test_an_interrupted_run_resumes_exactly_from_a_bucket(bucket_url, save_freq, at):
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), callbacks(bucket_url, InterruptAt(*at), save_freq=save_freq))
    state = rs.read_state(bucket_url)
    assert (state["epoch"], state["batch"]) == at
    assert state["source"].startswith(bucket_url + "/ckpt-")
    # The raised fit amended the newest checkpoint in the bucket: its
    # timeline says how the process's fit ended.
    (interruption,) = rs.goodput(bucket_url)["interruptions"]
    assert (interruption["cause"], interruption["epoch"], interruption["batch"]) == ("exception", *at)
    model = make_model()
    fit(model, callbacks(bucket_url, save_freq=save_freq))
    assert_same(outcome(model), run_uninterrupted())
    # The finished run deletes its prefix, as with a local backup_dir.
    with pytest.raises(FileNotFoundError, match="No checkpoint at path="):
        rs.read_state(bucket_url)


def test_read_state_restore_and_inspect_take_a_bucket_url(bucket_url, capsys):
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), callbacks(bucket_url, InterruptAt(7, 2), save_freq=1))
    sched = rs.LearningRateScheduler(documented_schedule)
    assert rs.restore(bucket_url, sched) == 7
    assert sched.get_state()["epoch"] == 7
    assert cli.main(["inspect", bucket_url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["epoch"], shown["batch"]) == (7, 2)


def test_a_second_writer_on_the_same_prefix_is_refused(bucket_url):
    first = rs.BackupAndRestore(bucket_url, save_freq=1)
    holder = {}

    class SecondWriter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1 and "error" not in holder:
                # Another process would do exactly this; the lease is per store.
                script = (
                    "import os; os.environ.setdefault('KERAS_BACKEND', 'jax')\n"
                    "from resumable_scheduler.storage.store import store_for\n"
                    f"s = store_for({bucket_url!r})\n"
                    "try:\n    s.open()\nexcept RuntimeError as e:\n    print(e)\n"
                )
                out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                     timeout=120, cwd=ROOT, env=dict(os.environ))
                holder["error"] = out.stdout + out.stderr

    model = make_model()
    fit(model, [first, rs.LearningRateScheduler(documented_schedule), SecondWriter()], epochs=3)
    assert re.search(rf"Another process is training with backup_dir='{re.escape(bucket_url)}'", holder["error"]), holder
    assert int(np.asarray(model.optimizer.iterations)) == 15  # the first one went on


@pytest.mark.slow
def test_sigkill_soak_against_a_bucket_is_bitwise_equal(tmp_path, bucket_url):
    # Quick mode: 4 kills (RS_SOAK_KILLS for more). A killed child's lease is
    # taken over at once on the same machine (its process is gone).
    kills = int(os.environ.get("RS_BUCKET_SOAK_KILLS", "4"))
    # Enough epochs that no life can finish the run before the last kill
    # (a life trains for at most `window` s; 5 batches an epoch).
    tally, got, want = run_soak(os.fspath(tmp_path), kills=kills, seed=3, delay=0.0, window=1.5,
                                epochs=60 + 20 * kills, log=lambda m: None, backup=bucket_url)
    assert tally.kills == kills, tally
    assert got["iterations"] == want["iterations"]
    assert got["lr"] == want["lr"]
    assert all(np.array_equal(a, b) for a, b in zip(got["weights"], want["weights"]))
