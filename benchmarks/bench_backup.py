"""rs.BackupAndRestore against stock keras.callbacks.BackupAndRestore.

    python benchmarks/bench_backup.py [--saves 12] [--resume-repeats 3]

Prints, in one run:
- for a model with about 50 MB of state, trained by `fit` with a save every
  `--every` batches, the time the training thread is blocked per save
  (median over the saves, the first two left out) by stock
  `keras.callbacks.BackupAndRestore`, by ours with
  `save_on_background=False` and with `save_on_background=True`; the host
  copy of the same state (a NumPy copy of every variable); the ratios
  ours(background) / stock (goal <= 0.25) and ours(background) / host copy
  (goal <= 2); and the wall time of each `fit` against one without
  checkpoints (on CPU the writer thread's work comes out of training's
  cores). Ours is one atomic commit (temporary, fsync, rename) holding
  weights, optimizer, RNGs, seed generators and callback states; stock
  writes the .weights.h5 in place and a JSON file, without fsync;
- resume time, from process start to the first resumed batch, ours / stock
  (the small model below, about 6 MB).
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


def make_big_model() -> keras.Model:
    """About 50 MB of float32 state: 12.6 million parameters, plain SGD."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((2048,)), keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(2048, activation="relu"), keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def state_bytes(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.variables + model.optimizer.variables)


class HostCopyAtSaves(keras.callbacks.Callback):
    """At each save point of a fit without checkpoints, times a NumPy copy
    of every variable of the state (fresh arrays, as a plain copy to host
    memory makes them; after the step in flight has finished and, on JAX,
    the state has been synced into the variables)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.times: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every:
            return
        from resumable_scheduler.storage.background import host_copy

        for v in (logs or {}).values():
            np.asarray(v)
        model = self.model  # syncs
        variables = model.variables + model.optimizer.variables
        t = time.perf_counter()
        copies = [host_copy(v) for v in variables]
        self.times.append(time.perf_counter() - t)
        del copies


def timed_batch_ends(cb: keras.callbacks.Callback, every: int, sink: list[float]) -> None:
    """Records how long `cb.on_train_batch_end` holds the training thread at
    each save batch."""
    inner = cb.on_train_batch_end

    def on_train_batch_end(batch, logs=None):
        if (batch + 1) % every == 0:
            # Not the save's cost: wait for the step in flight to finish (JAX
            # dispatches asynchronously; any read of the state waits for it).
            for v in (logs or {}).values():
                np.asarray(v)
        t = time.perf_counter()
        inner(batch, logs)
        if (batch + 1) % every == 0:
            sink.append(time.perf_counter() - t)

    cb.on_train_batch_end = on_train_batch_end


def bench_blocked(saves: int, every: int, batch_size: int) -> dict[str, object]:
    """Blocked time per save and fit wall time for each checkpointing kind."""
    steps = saves * every + every // 2  # every save mid-epoch, none at its end
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * batch_size, 2048), dtype=np.float32)
    y = rng.standard_normal((steps * batch_size, 10), dtype=np.float32)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        for kind in ("none", "stock", "sync", "background"):
            model = make_big_model()
            model.fit(x[:batch_size * 2], y[:batch_size * 2], batch_size=batch_size, verbose=0)  # compile
            where = os.path.join(d, kind)
            blocked: list[float] = []
            if kind == "stock":
                cb = keras.callbacks.BackupAndRestore(where, save_freq=every, delete_checkpoint=False)
            elif kind != "none":
                cb = rs.BackupAndRestore(where, save_freq=every, delete_checkpoint=False,
                                         save_on_background=kind == "background")
            callbacks = []
            if kind == "none":
                copier = HostCopyAtSaves(every)
                callbacks = [copier]
            else:
                timed_batch_ends(cb, every, blocked)
                callbacks = [cb]
            t = time.perf_counter()
            model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False, callbacks=callbacks, verbose=0)
            wall = time.perf_counter() - t
            out[kind] = (statistics.median(blocked[2:]) if len(blocked) > 2 else None, wall)
            if kind == "none":
                out["state_bytes"] = state_bytes(model)
                out["host_copy"] = statistics.median(copier.times[2:])
    return out


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
                cb._store.close()
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
    p.add_argument("--saves", type=int, default=8)
    p.add_argument("--every", type=int, default=40, help="batches between saves (about 1 s on 2 CPU cores)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resume-repeats", type=int, default=3)
    a = p.parse_args()
    r = bench_blocked(a.saves, a.every, a.batch_size)
    ms = {k: r[k][0] * 1e3 for k in ("stock", "sync", "background")}
    copy = r["host_copy"] * 1e3
    print(f"training thread blocked per save ({r['state_bytes'] / 1e6:.1f} MB of state, a save every "
          f"{a.every} batches, median of {a.saves - 2} saves):")
    print(f"  stock keras.callbacks.BackupAndRestore        {ms['stock']:8.1f} ms")
    print(f"  rs.BackupAndRestore(save_on_background=False) {ms['sync']:8.1f} ms")
    print(f"  rs.BackupAndRestore(save_on_background=True)  {ms['background']:8.1f} ms")
    print(f"  host copy of the state                        {copy:8.1f} ms")
    print(f"  ratio ours(background)/stock = {ms['background'] / ms['stock']:.2f} (goal <= 0.25); "
          f"ours(sync)/stock = {ms['sync'] / ms['stock']:.2f}")
    print(f"  ratio ours(background)/host copy = {ms['background'] / copy:.2f} (goal <= 2)")
    none = r["none"][1]
    print(f"fit wall time ({a.saves * a.every + a.every // 2} batches of {a.batch_size}): no checkpoints {none:.2f} s, "
          + ", ".join(f"{k} {r[k][1]:.2f} s ({r[k][1] / none:.2f}x)" for k in ("stock", "sync", "background")))
    r_ours, r_stock = bench_resume(a.resume_repeats)
    print(f"resume (process start to first resumed batch): ours {r_ours:.2f} s, stock {r_stock:.2f} s, "
          f"ratio ours/stock = {r_ours / r_stock:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
