"""Training child for tests/e2e/test_grain_kill.py: fits a shuffled grain
pipeline with a random map under rs.BackupAndRestore(save_freq=1), speaking
the `resumable_scheduler.harness` line protocol, and waiting for a line on
stdin after each batch (so a kill lands right there).

Usage: grain_child.py KIND BACKUP_DIR OUT.npz [--no-backup]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402
from tests.support.resume_helpers import documented_schedule, make_model  # noqa: E402

N, BS, EPOCHS = 24, 4, 3
SRC = np.arange(N * 20, dtype="float32").reshape(N, 20) / 500


def pipeline(kind):
    import grain

    ds = grain.MapDataset.range(N).shuffle(seed=7).map(lambda i: (SRC[i], np.full(10, 0.01 * (i % 5), "float32")))
    noise = lambda e, r: (e[0] + r.normal(size=20).astype("float32") * 0.01, e[1])  # noqa: E731
    if kind == "map":
        return ds.random_map(noise, seed=3).batch(BS)
    return ds.to_iter_dataset().random_map(noise, seed=3).batch(BS)


class Protocol(keras.callbacks.Callback):
    def __init__(self, wait):
        super().__init__()
        self.wait, self.epoch = wait, 0

    def on_train_begin(self, logs=None):
        print("start", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        print("batch", self.epoch, batch, flush=True)
        if self.wait:
            sys.stdin.readline()

    def on_epoch_end(self, epoch, logs=None):
        print("epoch", epoch, flush=True)


def main(argv):
    kind, backup, out = argv[:3]
    backup_on = "--no-backup" not in argv
    cbs = [rs.LearningRateScheduler(documented_schedule)]
    if backup_on:
        cbs.append(rs.BackupAndRestore(backup, save_freq=1))
    cbs.append(Protocol(wait=backup_on))
    model = make_model()
    model.fit(pipeline(kind), epochs=EPOCHS, callbacks=cbs, verbose=0)
    np.savez(out, lr=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
             iterations=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
             *[np.array(w) for w in model.weights])
    print("result", '{"done": true}', flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
