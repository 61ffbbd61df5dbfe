"""rs.BackupAndRestore against stock keras.callbacks.BackupAndRestore.

    python benchmarks/bench_backup.py [--repeats 15]

Prints, in one run on the same model (about 6 MB of weights) and disk:
- checkpoint save time, ours / stock (goal <= 1.10): ours is one atomic
  commit (temporary folder, fsync, rename) holding weights, optimizer,
  RNG, seed generators and callback states; stock writes the .weights.h5
  in place and a JSON file, without fsync;
- resume time, from process start to the first resumed batch, ours / stock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

CHILD = r'''
import os, sys, time
t0 = float(sys.argv[3])
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
import resumable_scheduler as rs
sys.path.insert(0, sys.argv[4])
from bench_backup import make_model, data
kind, d = sys.argv[1], sys.argv[2]
model = make_model()
class First(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        print(f"first {time.time() - t0:.4f}", flush=True)
        os._exit(0)
cb = rs.BackupAndRestore(d, save_freq=1) if kind == "ours" else keras.callbacks.BackupAndRestore(d, save_freq=1)
x, y = data()
model.fit(x, y, epochs=3, batch_size=32, callbacks=[cb, rs.LearningRateScheduler(lambda e, lr: lr), First()], verbose=0)
'''


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((512,)), keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((256, 512), dtype=np.float32), rng.standard_normal((256, 10), dtype=np.float32)


def bench_save(repeats: int) -> tuple[float, float, int]:
    model = make_model()
    x, y = data()
    sched = rs.LearningRateScheduler(lambda e, lr: lr)
    with tempfile.TemporaryDirectory() as d:
        ours = rs.BackupAndRestore(os.path.join(d, "ours"), save_freq=1)
        stock = keras.callbacks.BackupAndRestore(os.path.join(d, "stock"), save_freq=1)
        model.fit(x, y, epochs=1, batch_size=32, callbacks=[sched], verbose=0)
        for cb in (ours, stock, sched):
            cb.set_model(model)
            cb.set_params({"epochs": 1, "steps": 8, "verbose": 0})
        ours._open_dir()
        os.makedirs(stock.backup_dir, exist_ok=True)
        t_ours, t_stock = [], []
        for i in range(repeats + 2):  # interleaved; the first two warm up
            t = time.perf_counter()
            ours._commit(0, 3, None)
            a = time.perf_counter() - t
            t = time.perf_counter()
            stock._save_model()
            b = time.perf_counter() - t
            if i >= 2:
                t_ours.append(a)
                t_stock.append(b)
        ours._lock.release()
        size = sum(os.path.getsize(os.path.join(stock.backup_dir, n)) for n in os.listdir(stock.backup_dir))
    return statistics.median(t_ours), statistics.median(t_stock), size


def bench_resume(repeats: int) -> tuple[float, float]:
    here = os.path.dirname(os.path.abspath(__file__))
    x, y = data()
    out = {"ours": [], "stock": []}
    with tempfile.TemporaryDirectory() as d:
        # Prepare one backup of each kind, interrupted in epoch 1.
        for kind in ("ours", "stock"):
            model = make_model()
            cb = (rs.BackupAndRestore(os.path.join(d, kind), save_freq=1) if kind == "ours"
                  else keras.callbacks.BackupAndRestore(os.path.join(d, kind), save_freq=1))

            class Stop(keras.callbacks.Callback):
                def on_train_batch_begin(self, batch, logs=None):
                    if self.params and batch == 3 and getattr(self, "e", 0) == 1:
                        raise KeyboardInterrupt

                def on_epoch_begin(self, epoch, logs=None):
                    self.e = epoch

            try:
                model.fit(x, y, epochs=3, batch_size=32, callbacks=[cb, Stop()], verbose=0)
            except KeyboardInterrupt:
                pass
            rs.BackupAndRestore  # noqa: B018
            if kind == "ours":
                cb._lock.release()
        for _ in range(repeats):
            for kind in ("ours", "stock"):
                # Each child resumes from a fresh copy of the prepared backup.
                import shutil

                work = os.path.join(d, f"run-{kind}")
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(os.path.join(d, kind), work)
                t0 = time.time()
                res = subprocess.run([sys.executable, "-c", CHILD, kind, work, str(t0), here],
                                     capture_output=True, text=True, timeout=300)
                line = [s for s in res.stdout.splitlines() if s.startswith("first")]
                if not line:
                    raise RuntimeError(res.stderr[-2000:])
                out[kind].append(float(line[0].split()[1]))
    return statistics.median(out["ours"]), statistics.median(out["stock"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--resume-repeats", type=int, default=3)
    a = p.parse_args()
    ours, stock, size = bench_save(a.repeats)
    print(f"checkpoint save ({size / 1e6:.1f} MB): ours {ours * 1e3:.1f} ms, stock {stock * 1e3:.1f} ms, "
          f"ratio ours/stock = {ours / stock:.2f} (goal <= 1.10)")
    r_ours, r_stock = bench_resume(a.resume_repeats)
    print(f"resume (process start to first resumed batch): ours {r_ours:.2f} s, stock {r_stock:.2f} s, "
          f"ratio ours/stock = {r_ours / r_stock:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
