"""Training time with an async Orbax save every epoch, divided by the time with
no checkpointing, on a model of about 50 MB (goal: <= 1.10).

    python benchmarks/bench_orbax.py [--repeats 3] [--epochs 6] [--steps 40]

Model: Dense 1024 -> 3072 -> 3072 -> 10 (12.6 M float32 parameters, 50 MB),
SGD, batch 64. Each run is a fresh `fit` on an already compiled model; the
first epoch of every run is left out (it pays for the first save's set-up).
"Steady" is the mean epoch time (epoch start to the next epoch start, so the
blocking part of each save is counted); "whole fit" also counts the wait for
the last write at the end of `fit`. Runs alternate and the median is
reported, for `rs.OrbaxCheckpoint` and for stock `keras.callbacks.OrbaxCheckpoint`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402


def now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


class EpochClock(keras.callbacks.Callback):
    """Records the instant each epoch begins and when fit ends (put it first)."""

    def on_train_begin(self, logs=None):
        self.marks = []

    def on_epoch_begin(self, epoch, logs=None):
        self.marks.append(now())

    def on_train_end(self, logs=None):
        self.marks.append(now())


class EndClock(keras.callbacks.Callback):
    """Put last: the instant every callback (and the final wait) is done."""

    def on_train_end(self, logs=None):
        self.end = now()


def build(width: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((1024,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(1e-3), loss="mse")
    return model


def one_run(model, x, y, kind: str, epochs: int, batch: int) -> tuple[float, float, float]:
    d = tempfile.mkdtemp(prefix="bench_orbax_")
    try:
        clock, end = EpochClock(), EndClock()
        cbs: list = [clock]
        if kind == "rs":
            cbs.append(rs.OrbaxCheckpoint(d, save_freq="epoch"))
        elif kind == "stock":
            cbs.append(keras.callbacks.OrbaxCheckpoint(d, save_freq="epoch"))
        cbs.append(end)
        # Each run starts from epoch 0 (rs would otherwise resume a finished run).
        model.fit(x, y, epochs=epochs, batch_size=batch, callbacks=cbs, verbose=0, shuffle=False)
        marks = clock.marks
        # The epoch boundaries after the first one (those saves are steady state).
        steady = (marks[-2][0] - marks[1][0]) / (len(marks) - 3)
        steady_cpu = (marks[-2][1] - marks[1][1]) / (len(marks) - 3)
        whole = end.end[0] - marks[1][0]
        return steady, whole, steady_cpu
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=40, help="batches per epoch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=3072)
    a = p.parse_args(argv)

    model = build(a.width)
    mb = sum(int(np.prod(v.shape)) * 4 for v in model.weights) / 1e6
    n = a.steps * a.batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1024), dtype=np.float32)
    y = rng.standard_normal((n, 10), dtype=np.float32)
    model.fit(x, y, epochs=1, batch_size=a.batch, verbose=0)  # compile

    times: dict[str, list[tuple[float, float, float]]] = {"none": [], "rs": [], "stock": []}
    for _ in range(a.repeats):
        for kind in times:
            times[kind].append(one_run(model, x, y, kind, a.epochs, a.batch))

    def med(kind, i):
        return statistics.median(t[i] for t in times[kind])

    print(f"model state: {mb:.1f} MB; {a.steps} steps/epoch, batch {a.batch}, "
          f"{a.epochs} epochs x {a.repeats} runs, backend {keras.backend.backend()}")
    print(f"{'':24}{'steady epoch (s)':>17}{'ratio':>7}{'whole fit (s)':>15}{'ratio':>7}"
          f"{'CPU/epoch (s)':>15}{'ratio':>7}")
    for kind, label in (("none", "no checkpointing"), ("rs", "rs.OrbaxCheckpoint"),
                        ("stock", "keras OrbaxCheckpoint")):
        print(f"{label:24}{med(kind, 0):17.3f}{med(kind, 0) / med('none', 0):7.3f}"
              f"{med(kind, 1):15.3f}{med(kind, 1) / med('none', 1):7.3f}"
              f"{med(kind, 2):15.3f}{med(kind, 2) / med('none', 2):7.3f}")
    ratio = med("rs", 0) / med("none", 0)
    load = os.getloadavg()[0]
    print(f"\nrs.OrbaxCheckpoint steady-state step-time ratio: {ratio:.3f} (goal <= 1.10); "
          f"CPU-time ratio {med('rs', 2) / med('none', 2):.3f}; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs (other load skews the wall-clock ratio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
