"""A training script run as a child process by the kill/SIGTERM tests.

It is what a user's script looks like: build, compile, fit with
`rs.BackupAndRestore` and `rs.LearningRateScheduler`, save results. Rerunning
it after any interruption continues the same run.

    python tests/support/child_train.py BACKUP_DIR OUT_DIR [--save-freq N|epoch]
        [--batch-log FILE] [--sleep SECONDS] [--samples N] [--epochs N]
        [--raise-at E,B] [--save-model FILE.keras]

It prints `start` once training begins and `batch E B` after each batch (the
line protocol of `resumable_scheduler.harness`, which kills and restarts it),
and appends `E B` for every trained batch to --batch-log. At the end it writes
OUT_DIR/weights.npz and OUT_DIR/result.json (and --save-model's file).
--raise-at makes a callback raise `RuntimeError` at the start of batch B of
epoch E: an uncaught exception that ends the process.
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

#: Seconds the child sleeps after writing each commit's temporary (before
#: its fsync and rename), widening the window in which a kill lands inside a
#: checkpoint write. Test machinery: the package has no such hook.
DELAY_ENV = "RS_TEST_COMMIT_DELAY"


def _widen_commit_window(delay: float) -> None:
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


class RaiseAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError(f"a bug at epoch {self.epoch}, batch {batch}")


class Progress(keras.callbacks.Callback):
    def __init__(self, log_path, sleep):
        super().__init__()
        self.log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self.sleep = sleep
        self.epoch = 0

    def on_train_begin(self, logs=None):
        print("start", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.log:
            self.log.write(f"{self.epoch} {batch}\n")
        print(f"batch {self.epoch} {batch}", flush=True)
        if self.sleep:
            time.sleep(self.sleep)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backup_dir")
    p.add_argument("out_dir")
    p.add_argument("--save-freq", default="1")
    p.add_argument("--batch-log")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--no-backup", action="store_true")
    p.add_argument("--raise-at")
    p.add_argument("--save-model")
    a = p.parse_args(argv)
    if os.environ.get(DELAY_ENV):
        _widen_commit_window(float(os.environ[DELAY_ENV]))
    save_freq = a.save_freq if a.save_freq == "epoch" else int(a.save_freq)

    keras.utils.set_random_seed(0)
    x = np.arange(a.samples * 20, dtype="float32").reshape(a.samples, 20) / (a.samples * 20)
    y = np.zeros((a.samples, 10), dtype="float32")
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    callbacks = [rs.LearningRateScheduler(schedule)]
    if not a.no_backup:
        callbacks.append(rs.BackupAndRestore(a.backup_dir, save_freq=save_freq))
    callbacks.append(Progress(a.batch_log, a.sleep))
    if a.raise_at:
        callbacks.append(RaiseAt(*map(int, a.raise_at.split(","))))
    model.fit(x, y, epochs=a.epochs, batch_size=1, callbacks=callbacks, verbose=0)
    os.makedirs(a.out_dir, exist_ok=True)
    np.savez(os.path.join(a.out_dir, "weights.npz"), *[np.array(v) for v in model.weights])
    with open(os.path.join(a.out_dir, "result.json"), "w") as f:
        json.dump({"lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
                   "iterations": int(ops.convert_to_numpy(model.optimizer.iterations))}, f)
    if a.save_model:
        model.save(a.save_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
