"""torch `DataLoader` inputs on the torch backend: steady-state overhead.

    python benchmarks/bench_torch_loader.py [--repeats 3]

Prints the epoch time of `fit` on a map-style `DataLoader(shuffle=True,
generator=...)` with `rs.BackupAndRestore(save_freq="epoch")` and
`rs.LearningRateScheduler`, divided by the same with stock Keras's
`BackupAndRestore` and `LearningRateScheduler` (goal <= 1.02), median of the
interleaved repeats, the first epoch of each fit (compilation) left out; and
the resume time at 90% of a 2,000-batch epoch divided by the resume time at
batch 2 (goal <= 1.1: the skipped batches are not loaded).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

BATCHES, BS = 2000, 4
X = np.random.default_rng(0).random((BATCHES * BS, 20), dtype=np.float32)


class Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int):
        x = X[i]
        for _ in range(20):  # a little work per sample, as a real decode would
            x = np.tanh(x)
        return x, x[:10]


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Rows(), batch_size=BS, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32), keras.layers.Dense(10)])
    m.compile(keras.optimizers.SGD(0.01), loss="mse")
    return m


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def steady(ours: bool, workdir: str) -> float:
    d = os.path.join(workdir, f"steady-{ours}")
    shutil.rmtree(d, ignore_errors=True)
    timer = EpochTimer()
    if ours:
        cbs = [rs.BackupAndRestore(d, save_freq="epoch"), rs.LearningRateScheduler(lambda e, lr: lr)]
    else:
        cbs = [keras.callbacks.BackupAndRestore(d, save_freq="epoch"),
               keras.callbacks.LearningRateScheduler(lambda e, lr: lr)]
    model().fit(loader(), epochs=3, verbose=0, callbacks=cbs + [timer])
    return min(timer.times[1:])


class Stop(keras.callbacks.Callback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.at:
            raise KeyboardInterrupt


class First(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


def resume_time(at: int, workdir: str) -> float:
    d = os.path.join(workdir, f"resume-{at}")
    shutil.rmtree(d, ignore_errors=True)
    try:
        model().fit(loader(), epochs=1, verbose=0, callbacks=[rs.BackupAndRestore(d, save_freq=at), Stop(at)])
    except KeyboardInterrupt:
        pass
    m = model()
    t0 = time.perf_counter()
    try:
        m.fit(loader(), epochs=1, verbose=0, callbacks=[rs.BackupAndRestore(d, save_freq=at), First()])
    except KeyboardInterrupt:
        pass
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as workdir:
        late = min(resume_time(int(BATCHES * 0.9), workdir) for _ in range(a.repeats))
        early = min(resume_time(2, workdir) for _ in range(a.repeats))
        print(f"resume at batch {int(BATCHES * 0.9)}: {late:.3f} s, at batch 2: {early:.3f} s; "
              f"ratio {late / early:.3f} (goal <= 1.1)", flush=True)
        ours, stock = [], []
        for _ in range(a.repeats):  # interleaved: the machine may be shared
            stock.append(steady(False, workdir))
            ours.append(steady(True, workdir))
        o, s = statistics.median(ours), statistics.median(stock)
        print(f"steady epoch: stock {s:.3f} s, ours {o:.3f} s; ratio {o / s:.3f} (goal <= 1.02)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
