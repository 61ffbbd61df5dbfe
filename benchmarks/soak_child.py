"""The training child of `benchmarks/soak.py`, killed and restarted by
`resumable_scheduler.harness`.

    python benchmarks/soak_child.py BACKUP_DIR OUT_DIR [--epochs N]
        [--commit-delay SECONDS] [--no-backup]

A user's script: the documented schedule (0.01 for epochs 0-9, then times
exp(-0.1) an epoch), a `Dense(10)` behind `Dropout(0.2)` on 5 samples,
`batch_size=1`, `rs.BackupAndRestore(save_freq=1)`, shuffled. Rerunning it
after any interruption continues the same run. It prints `start`, then
`batch E B` after each batch, and at the end writes OUT_DIR/weights.npz and
OUT_DIR/result.json (`lr`, `iterations`).

`--commit-delay S` sleeps S seconds after writing each checkpoint's
temporary (before its fsync and rename), widening the window in which a kill
lands inside a checkpoint write: benchmark machinery, not a package option.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

SAMPLES = 5


def widen_commit_window(delay: float) -> None:
    """Every commit sleeps `delay` s between writing its temporary and its rename."""
    from resumable_scheduler.storage import atomic

    commit_file = atomic.commit_file

    def slow_commit_file(stem, suffix, write, final_name):
        def slow_write(tmp):
            write(tmp)
            time.sleep(delay)

        return commit_file(stem, suffix, slow_write, final_name)

    atomic.commit_file = slow_commit_file


def schedule(epoch, lr):
    return lr if epoch < 10 else lr * ops.exp(-0.1)


class Progress(keras.callbacks.Callback):
    """The harness's line protocol: `start`, then `batch E B`."""

    def on_train_begin(self, logs=None):
        self.epoch = 0
        print("start", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        print(f"batch {self.epoch} {batch}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backup_dir")
    p.add_argument("out_dir")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--commit-delay", type=float, default=0.0)
    p.add_argument("--no-backup", action="store_true")
    a = p.parse_args(argv)
    if a.commit_delay:
        widen_commit_window(a.commit_delay)
    keras.utils.set_random_seed(0)
    x = np.arange(SAMPLES * 20, dtype="float32").reshape(SAMPLES, 20) / (SAMPLES * 20)
    y = np.zeros((SAMPLES, 10), dtype="float32")
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    callbacks = [rs.LearningRateScheduler(schedule)]
    if not a.no_backup:
        callbacks.append(rs.BackupAndRestore(a.backup_dir, save_freq=1))
    callbacks.append(Progress())
    model.fit(x, y, epochs=a.epochs, batch_size=1, callbacks=callbacks, verbose=0)
    os.makedirs(a.out_dir, exist_ok=True)
    np.savez(os.path.join(a.out_dir, "weights.npz"), *[np.asarray(v) for v in model.weights])
    with open(os.path.join(a.out_dir, "result.json"), "w") as f:
        json.dump({"lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
                   "iterations": int(ops.convert_to_numpy(model.optimizer.iterations))}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
