"""The kill-anywhere soak for the tests: SIGKILL a training child at random
instants until it finishes, then compare it bit for bit with a child never
killed.

Used by `tests/e2e/test_soak.py` (a quick mode in CI) and
`tests/integration/test_bucket_backup.py`; the loop is
`resumable_scheduler.harness.run_until_done` (`benchmarks/soak.py` runs the
same loop, 200 kills, with its own child). Kills land anywhere: mid-batch,
between batches, and inside checkpoint writes, which the child widens when
`DELAY_ENV` is set (it sleeps after writing each commit's temporary: test
machinery, in `tests/support/child_train.py`, not in the package); a kill
counts as "inside a write" when a `*.tmp-*` temporary is on disk right after
it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from resumable_scheduler import harness
from tests.support.child_train import DELAY_ENV

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child_train.py")


@dataclass
class Tally:
    kills: int = 0
    inside_write: int = 0
    mid_epoch: int = 0
    #: Child runs started (the last one finished).
    runs: int = 0
    #: Where the backup resumes after each kill (None: no checkpoint yet).
    positions: list = field(default_factory=list)
    record: harness.RunRecord | None = None


def child_command(*args: str) -> list[str]:
    return [sys.executable, CHILD, *args]


def load_result(out):
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        res["weights"] = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    return res


def run_soak(workdir: str, kills: int, seed: int = 0, delay: float = 0.01,
             window: float = 1.5, epochs: int = 15, log: Callable[[str], None] = print,
             backup: str | None = None) -> tuple[Tally, dict, dict]:
    """Returns (tally, result of the killed run, result of the reference run).
    `backup` is the backup_dir (default: `workdir/backup`; a bucket URL works).
    Each kill lands `uniform(0, window)` s after its run's `start`."""
    out, ref_out = (os.path.join(workdir, n) for n in ("out", "ref"))
    backup = backup or os.path.join(workdir, "backup")
    common = ["--save-freq", "1", "--epochs", str(epochs)]
    harness.run_until_done(child_command(os.path.join(workdir, "unused"), ref_out, *common, "--no-backup"),
                           timeout=600, name="The reference child")
    env = dict(os.environ, **({DELAY_ENV: str(delay)} if delay else {}))
    tally = Tally()

    def after_kill(kill: harness.KillRecord) -> None:
        inside = harness.inside_write(backup)
        pos = harness.backup_position(backup)
        tally.kills += 1
        tally.inside_write += inside
        tally.mid_epoch += bool(pos and pos[1])
        tally.positions.append(pos)
        log(f"kill {tally.kills}: checkpoint at {pos}{' (inside a write)' if inside else ''}")

    plan = harness.random_kills(kills, seed, after_seconds=(0, window))
    record = harness.run_until_done(child_command(backup, out, *common), plan, env=env,
                                    timeout=900 + 30 * kills, after_kill=after_kill,
                                    name="The soak's training child")
    tally.runs = record.runs
    tally.record = record
    return tally, load_result(out), load_result(ref_out)
