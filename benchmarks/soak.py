"""The full kill-anywhere soak: 200 SIGKILLs at random instants, then a tally.

    python benchmarks/soak.py [--kills 200] [--seed 0] [--delay 0.01] [--window 0.6]

Runs `benchmarks/soak_child.py` once never killed, then again under
`resumable_scheduler.harness.run_until_done`, SIGKILLed `--kills` times, each
time `uniform(0, --window)` s after the child starts training, and restarted
until it finishes. Prints where each kill left the backup, how many landed
inside a checkpoint write, and whether the final run equals the never-killed
one bit for bit. Exits 0 only if it does. `--kills 5` is a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# This process reads the backup after each kill (rs.read_state imports Keras).
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from resumable_scheduler import harness  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak_child.py")


def load_result(out: str) -> dict:
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        res["weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.01,
                   help="seconds each commit sleeps before its rename (widens the writes)")
    p.add_argument("--window", type=float, default=0.6,
                   help="max seconds between the child's start and the kill")
    p.add_argument("--epochs", type=int, default=None, help="default: max(15, kills // 4)")
    a = p.parse_args(argv)
    # 200 kills need a run long enough to absorb them: more epochs.
    epochs = a.epochs or max(15, a.kills // 4)
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rs-soak-") as d:
        backup, out, ref_out = (os.path.join(d, n) for n in ("backup", "out", "ref"))
        common = ["--epochs", str(epochs)]
        harness.run_until_done([sys.executable, CHILD, os.path.join(d, "unused"), ref_out, *common, "--no-backup"],
                               env=env, timeout=900, name="The reference child")
        inside_write = mid_epoch = 0

        def after_kill(kill: harness.KillRecord) -> None:
            nonlocal inside_write, mid_epoch
            inside = harness.inside_write(backup)
            pos = harness.backup_position(backup)
            inside_write += inside
            mid_epoch += bool(pos and pos[1])
            said = "nothing" if kill.progress is None else f"epoch {kill.progress.epoch}, batch {kill.progress.batch}"
            print(f"kill {len(record_kills) + 1}: child reported {said}, checkpoint at {pos}"
                  f"{' (inside a write)' if inside else ''}", flush=True)
            record_kills.append(kill)

        record_kills: list[harness.KillRecord] = []
        plan = harness.random_kills(a.kills, a.seed, after_seconds=(0, a.window))
        record = harness.run_until_done(
            [sys.executable, CHILD, backup, out, *common, "--commit-delay", str(a.delay)], plan,
            env=env, timeout=1800 + 30 * a.kills, after_kill=after_kill, name="The soak's training child")
        got, want = load_result(out), load_result(ref_out)
    same = (got["iterations"] == want["iterations"] and got["lr"] == want["lr"]
            and len(got["weights"]) == len(want["weights"])
            and all(np.array_equal(x, y) for x, y in zip(got["weights"], want["weights"])))
    print(f"kills: {len(record.kills)}, inside a checkpoint write: {inside_write}, "
          f"left mid-epoch: {mid_epoch}, runs: {record.runs}, epochs: {epochs}")
    print(f"final lr {got['lr']:.7f} vs {want['lr']:.7f}; iterations {got['iterations']} vs "
          f"{want['iterations']}; weights bitwise equal: {same}; {time.time() - t0:.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
