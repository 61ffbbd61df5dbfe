"""grain inputs: resume cost at 90% of an epoch, and steady-state overhead.

Prints, for a grain.MapDataset and a grain.IterDataset (shuffled, random
map, each element costing a little to read) of 2,000 batches:

- resume ratio: time from the resumed `fit`'s start to its first trained
  batch, resuming at batch 1,800, divided by the same resuming at batch 2
  (target <= 1.1: the skipped batches are not read). Each resumed `fit`
  starts once the reads left running by the interrupted one have stopped
  (grain reads up to 500 elements ahead on 16 threads, also for the two
  looks Keras takes at the data before training; with 2 cores that
  background work, not the position, decides the time). Also printed: the
  part from `on_train_begin` to the first batch (our restore and
  positioning; the rest is Keras building its adapter and model);
- steady ratio: epoch time of `fit` with rs.BackupAndRestore(save_freq="epoch")
  and rs.LearningRateScheduler, divided by stock Keras's
  BackupAndRestore and LearningRateScheduler (target <= 1.02).

Usage: python benchmarks/bench_grain.py [--repeats 3] [--only resume|steady] [--kinds map,iter]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

BATCHES, BS = 2000, 4
SRC = np.random.default_rng(0).random((BATCHES * BS, 20), dtype=np.float32)
READS = [0]  # elements read so far (grain reads on many threads; a lost count is harmless)


def quiet(idle=0.3, limit=30.0):
    """Waits until no element has been read for `idle` seconds: grain's
    read-ahead threads of earlier iterators have finished."""
    seen, since, end = READS[0], time.monotonic(), time.monotonic() + limit
    while time.monotonic() < end and time.monotonic() - since < idle:
        time.sleep(0.05)
        if READS[0] != seen:
            seen, since = READS[0], time.monotonic()
    gc.collect()


def read(i):
    READS[0] += 1
    x = SRC[i]
    for _ in range(20):  # a little work per element, as a real decode would
        x = np.tanh(x)
    return x, x[:10]


def pipeline(kind):
    ds = grain.MapDataset.range(BATCHES * BS).shuffle(seed=1).map(read)
    noise = lambda e, r: (e[0] + r.normal(size=20).astype("float32") * 0.01, e[1])  # noqa: E731
    if kind == "map":
        return ds.random_map(noise, seed=2).batch(BS)
    return ds.to_iter_dataset().random_map(noise, seed=2).batch(BS)


def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    m.compile(keras.optimizers.SGD(), loss="mse")
    return m


def lr(epoch, value):
    return value


class Stop(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.at:
            raise KeyboardInterrupt


class FirstBatch(keras.callbacks.Callback):
    """Listed first: `dt` runs from the start of `on_train_begin` (before
    ours restores the checkpoint) to the first trained batch."""

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()
        self.dt = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.dt is None:
            self.dt = time.perf_counter() - self.t0
            raise KeyboardInterrupt  # measured: stop here


def resume_time(kind, at, workdir):
    d = os.path.join(workdir, f"{kind}-{at}")
    shutil.rmtree(d, ignore_errors=True)
    try:
        model().fit(pipeline(kind), epochs=1, verbose=0,
                    callbacks=[rs.BackupAndRestore(d, save_freq=at), Stop(at)])
    except KeyboardInterrupt:
        pass
    probe = FirstBatch()
    m, ds = model(), pipeline(kind)
    quiet()
    start = time.perf_counter()
    try:
        m.fit(ds, epochs=1, verbose=0, callbacks=[probe, rs.BackupAndRestore(d, save_freq=at)])
    except KeyboardInterrupt:
        pass
    total = time.perf_counter() - start
    quiet()
    return total, probe.dt


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def steady(kind, ours, workdir):
    d = os.path.join(workdir, f"steady-{kind}-{ours}")
    shutil.rmtree(d, ignore_errors=True)
    timer = EpochTimer()
    if ours:
        cbs = [rs.BackupAndRestore(d, save_freq="epoch"), rs.LearningRateScheduler(lr)]
    else:
        cbs = [keras.callbacks.BackupAndRestore(d, save_freq="epoch"), keras.callbacks.LearningRateScheduler(lr)]
    model().fit(pipeline(kind), epochs=3, verbose=0, callbacks=cbs + [timer])
    return min(timer.times[1:])  # the first epoch compiles


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("resume", "steady"), help="measure only one of the two")
    ap.add_argument("--kinds", default="map,iter", help="comma-separated: map, iter")
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as workdir:
        for kind in args.kinds.split(","):
            if args.only != "steady":
                late, early = [], []
                for _ in range(args.repeats):  # interleaved: the machine is shared
                    late.append(resume_time(kind, int(BATCHES * 0.9), workdir))
                    early.append(resume_time(kind, 2, workdir))
                for name, i in (("fit start", 0), ("on_train_begin", 1)):
                    lt, et = [t[i] for t in late], [t[i] for t in early]
                    print(f"{kind}: from {name} to the first batch, resume at batch 1800 "
                          f"{' '.join(f'{t:.3f}' for t in lt)}s, at batch 2 {' '.join(f'{t:.3f}' for t in et)}s; "
                          f"ratio of the best {min(lt) / min(et):.3f}, of the medians "
                          f"{np.median(lt) / np.median(et):.3f} (target <= 1.1)", flush=True)
            if args.only != "resume":
                s_ours, s_stock = [], []
                for _ in range(args.repeats):  # interleaved: the machine is shared
                    s_ours.append(steady(kind, True, workdir))
                    s_stock.append(steady(kind, False, workdir))
                print(f"{kind}: epoch of {BATCHES} batches ours {' '.join(f'{t:.3f}' for t in s_ours)}s, "
                      f"stock {' '.join(f'{t:.3f}' for t in s_stock)}s, steady ratio of the best "
                      f"{min(s_ours) / min(s_stock):.3f} (target <= 1.02)", flush=True)

if __name__ == "__main__":
    main()
