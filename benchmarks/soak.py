"""The full kill-anywhere soak: 200 SIGKILLs at random instants, then a tally.

    python benchmarks/soak.py [--kills 200] [--seed 0] [--delay 0.01]

Prints where each kill left the backup, how many landed inside a checkpoint
write, and whether the final run equals a never-killed one bit for bit.
Exits 0 only if it does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tests.support.soak import run_soak  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--window", type=float, default=0.6,
                   help="max seconds between the child's start and the kill")
    a = p.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        # 200 kills need a run long enough to absorb them: more epochs.
        epochs = max(15, a.kills // 4)
        tally, got, want = run_soak(d, kills=a.kills, seed=a.seed, delay=a.delay,
                                    window=a.window, epochs=epochs)
    same = (got["iterations"] == want["iterations"] and got["lr"] == want["lr"]
            and all(np.array_equal(x, y) for x, y in zip(got["weights"], want["weights"])))
    print(f"kills: {tally.kills}, inside a checkpoint write: {tally.inside_write}, "
          f"left mid-epoch: {tally.mid_epoch}, runs: {tally.restarts}, epochs: {epochs}")
    print(f"final lr {got['lr']:.7f} vs {want['lr']:.7f}; iterations {got['iterations']} vs "
          f"{want['iterations']}; weights bitwise equal: {same}; {time.time() - t0:.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
