"""The kill-anywhere soak: SIGKILL a training child at random instants until
it finishes, then compare it bit for bit with a child never killed.

Used by `tests/e2e/test_soak.py` (a quick mode in CI) and `benchmarks/soak.py`
(200 kills). Kills land anywhere: mid-batch, between batches, and inside
checkpoint writes, which the child widens when `DELAY_ENV` is set (it
sleeps after writing each commit's temporary: test machinery, in
`tests/support/child_train.py`, not in the package); a kill counts as "inside a
write" when a `*.tmp-*` temporary is on disk right after it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from resumable_scheduler.storage.atomic import TMP_MARK
from tests.support.child_train import DELAY_ENV

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child_train.py")


@dataclass
class Tally:
    kills: int = 0
    inside_write: int = 0
    mid_epoch: int = 0
    restarts: int = 0
    positions: list = field(default_factory=list)


def _child(args, env=None):
    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def load_result(out):
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        res["weights"] = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    return res


def run_soak(workdir: str, kills: int, seed: int = 0, delay: float = 0.01,
             window: float = 1.5, epochs: int = 15, log=print,
             backup: str | None = None) -> tuple[Tally, dict, dict]:
    """Returns (tally, result of the killed run, result of the reference run).
    `backup` is the backup_dir (default: `workdir/backup`; a bucket URL works)."""
    rng = random.Random(seed)
    out, ref_out = (os.path.join(workdir, n) for n in ("out", "ref"))
    backup = backup or os.path.join(workdir, "backup")
    common = ["--save-freq", "1", "--epochs", str(epochs)]
    ref = _child([os.path.join(workdir, "unused"), ref_out, *common, "--no-backup"])
    if ref.wait(timeout=600) != 0:
        raise RuntimeError("the reference child failed")
    env = dict(os.environ, **({DELAY_ENV: str(delay)} if delay else {}))
    tally = Tally()
    while True:
        child = _child([backup, out, *common], env=env)
        tally.restarts += 1
        if tally.kills >= kills:
            code = child.wait(timeout=900)
            if code != 0:
                raise RuntimeError(f"the final child exited with {code}")
            break
        line = child.stdout.readline()
        while line and line.strip() != "start":
            line = child.stdout.readline()
        time.sleep(rng.uniform(0, window))
        if child.poll() is not None:  # finished before the kill
            break
        child.send_signal(signal.SIGKILL)
        child.wait()
        tally.kills += 1
        # (A bucket has no temporaries: an object appears whole or not at all.)
        inside = any(TMP_MARK in n for n in os.listdir(backup)) if os.path.isdir(backup) else False
        tally.inside_write += inside
        try:
            from resumable_scheduler import read_state

            s = read_state(backup)
            pos = (s["epoch"], s["batch"])
        except (FileNotFoundError, ValueError):
            pos = None
        tally.mid_epoch += bool(pos and pos[1])
        tally.positions.append(pos)
        log(f"kill {tally.kills}: checkpoint at {pos}{' (inside a write)' if inside else ''}")
    return tally, load_result(out), load_result(ref_out)
