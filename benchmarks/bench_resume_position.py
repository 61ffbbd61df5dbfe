"""Issue 10: the cost of positioning a resumed epoch, and of the callbacks.

1. Resume time at 90% of a 2,000-batch PyDataset epoch (5 ms per
   `__getitem__`) / resume time at the epoch's start (goal <= 1.1): the
   time from `fit` start to the first trained batch of the resumed epoch.
   Both resume from a checkpoint (the start: at batch 1, one batch to
   skip), so the ratio is what the position costs; the time of a fresh
   start, with no checkpoint to read, is printed beside it.
2. Steady-state `fit` time with rs.BackupAndRestore + rs.LearningRateScheduler
   / with keras.callbacks' BackupAndRestore + LearningRateScheduler (goal
   <= 1.02), for arrays and a PyDataset, 2,000 batches of one sample (so the
   per-batch cost of the callbacks is what is measured).

Prints the ratios; asserts nothing. `python benchmarks/bench_resume_position.py`
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

BATCHES = int(os.environ.get("BENCH_BATCHES", 2000))
DELAY = 0.005
X = np.random.RandomState(0).rand(BATCHES, 8).astype("float32")
Y = np.random.RandomState(1).rand(BATCHES, 1).astype("float32")


class Slow(keras.utils.PyDataset):
    def __init__(self, delay=DELAY, n=BATCHES, **kw):
        super().__init__(**kw)
        self.delay, self.n = delay, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        return X[i:i + 1], Y[i:i + 1]


def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(), loss="mse")
    m.evaluate(X[:1], Y[:1], verbose=0)
    return m


class Stop(keras.callbacks.Callback):
    """Records the time of the first trained batch and stops."""

    def on_train_batch_begin(self, batch, logs=None):
        self.t = time.perf_counter()
        raise KeyboardInterrupt


class At(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            raise KeyboardInterrupt


def resume_time(batch: int) -> float:
    d = tempfile.mkdtemp()
    # A checkpoint at `batch` of epoch 0 (written without the slow reads).
    try:
        model().fit(Slow(delay=0), epochs=1, shuffle=True, verbose=0,
                    callbacks=[rs.BackupAndRestore(d, save_freq=max(batch, 1)), At(max(batch, 1))])
    except KeyboardInterrupt:
        pass
    if batch == 0:
        d = tempfile.mkdtemp()  # nothing to resume: a fresh start
    stop = Stop()
    t0 = time.perf_counter()
    try:
        model().fit(Slow(), epochs=1, shuffle=True, verbose=0, callbacks=[rs.BackupAndRestore(d, save_freq=100), stop])
    except KeyboardInterrupt:
        pass
    return stop.t - t0


def fit_time(kind: str, callbacks, epochs=3) -> float:
    m = model()
    t0 = time.perf_counter()
    if kind == "arrays":
        m.fit(X, Y, batch_size=1, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks())
    else:
        m.fit(Slow(delay=0), epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks())
    return time.perf_counter() - t0


def best(f, n=5):
    return min(f() for _ in range(n))


def main() -> None:
    at = int(0.9 * BATCHES)
    # The baseline resumes from a checkpoint too (at batch 1: one to load,
    # nothing to skip), so the ratio isolates what the position costs; a
    # fresh start (no checkpoint to read) is printed beside it.
    fresh = best(lambda: resume_time(0))
    r0 = best(lambda: resume_time(1))
    r90 = best(lambda: resume_time(at))
    print(f"resume at batch 1: {r0:.3f} s; at batch {at} of {BATCHES}: {r90:.3f} s; "
          f"ratio {r90 / r0:.3f} (goal <= 1.1; consuming would add {at * DELAY:.1f} s); "
          f"a fresh start, nothing to load: {fresh:.3f} s")
    for kind in ("arrays", "pydataset"):
        fit_time(kind, list, epochs=1)  # warm-up (compilation)
        # Stock: the same two callbacks from keras.callbacks (what rs replaces).
        stock = best(lambda: fit_time(kind, lambda: [keras.callbacks.BackupAndRestore(tempfile.mkdtemp()),
                                                     keras.callbacks.LearningRateScheduler(lambda e, lr: lr)]))
        ours = best(lambda: fit_time(kind, lambda: [rs.BackupAndRestore(tempfile.mkdtemp()),
                                                    rs.LearningRateScheduler(lambda e, lr: lr)]))
        print(f"{kind}: steady-state fit stock {stock:.3f} s, with rs callbacks {ours:.3f} s; "
              f"ratio {ours / stock:.3f} (goal <= 1.02)")


if __name__ == "__main__":
    main()
