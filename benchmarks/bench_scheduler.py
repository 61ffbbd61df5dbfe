"""Overhead of `rs.LearningRateScheduler` against the stock callback.

    python benchmarks/bench_scheduler.py [--epochs 300] [--repeats 15]

Prints, in one run:

1. `fit` wall time with `rs.LearningRateScheduler` divided by `fit` with
   `keras.callbacks.LearningRateScheduler`: many short epochs of a tiny
   model, where a per-epoch or per-batch callback cost shows most. Both
   variants are compiled before timing; each repeat runs both back to back
   (ours first in even repeats, stock first in odd ones) and the headline is
   the median of the per-repeat ratios (the ratio of the two medians is
   printed beside it). Goal: <= 1.02.
   Beside it, the cost of each callback's own hooks, driven outside `fit`
   (fastest of 7 runs), which a busy machine disturbs much less.
2. The bytes the state adds to a checkpoint: the size of `.weights.h5` and
   `.keras` files of the same model trained with our callback, minus the
   same with the stock one (15 epochs: the documented example; and after
   the long run above).

The schedule returns a Python float (`lr * math.exp(-0.1)`): the stock
callback raises on the documented `ops.exp` version, which returns a JAX
array (FINDINGS row 2).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402


def schedule(epoch: int, lr: float) -> float:
    if epoch < 10:
        return lr
    return lr * math.exp(-0.1)


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(samples, 20)).astype("float32"), np.zeros((samples, 10), "float32")


def timed_fit(model: keras.Model, callback: keras.callbacks.Callback, x, y, epochs: int, batch_size: int) -> tuple[float, float]:
    """Returns (wall seconds, process CPU seconds) of one `fit`."""
    model.optimizer.learning_rate = 0.01
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0, callbacks=[callback])
    return time.perf_counter() - t0, time.process_time() - c0


def bench_ratio(epochs: int, repeats: int, batches: int, batch_size: int) -> dict:
    x, y = data(batches * batch_size)
    models = {"rs": build(), "stock": build()}
    make = {
        "rs": lambda: rs.LearningRateScheduler(schedule),
        "stock": lambda: keras.callbacks.LearningRateScheduler(schedule),
    }
    for name, model in models.items():  # compile outside the timing
        timed_fit(model, make[name](), x, y, epochs=2, batch_size=batch_size)
    times: dict[str, list[float]] = {"rs": [], "stock": []}
    cpu: dict[str, list[float]] = {"rs": [], "stock": []}
    for r in range(repeats):
        order = ("rs", "stock") if r % 2 == 0 else ("stock", "rs")
        for name in order:
            wall, proc = timed_fit(models[name], make[name](), x, y, epochs, batch_size)
            times[name].append(wall)
            cpu[name].append(proc)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_ratio = statistics.median(cpu["rs"]) / statistics.median(cpu["stock"])
    # Each repeat runs both variants back to back, under the same machine
    # load: the median of these paired ratios resists a noisy machine better
    # than the ratio of the medians.
    paired = statistics.median(r / s for r, s in zip(times["rs"], times["stock"]))
    return {"times": times, "median": med, "ratio": med["rs"] / med["stock"], "paired": paired,
            "cpu_ratio": cpu_ratio}


def hook_cost(epochs: int, batches: int, repeats: int = 7) -> dict:
    """Microseconds per epoch spent in each callback's own hooks.

    Drives the hooks `fit` calls (train begin; per epoch: epoch begin, the
    batch hooks, epoch end) on a compiled model, outside `fit`, and keeps the
    fastest of `repeats` runs: a load-robust measure of the overhead alone.
    """
    model = build()
    x, y = data(batches * 8)
    model.fit(x, y, epochs=1, verbose=0)
    params = {"epochs": epochs, "steps": batches, "verbose": 0}
    make = {
        "rs": lambda: rs.LearningRateScheduler(schedule),
        "stock": lambda: keras.callbacks.LearningRateScheduler(schedule),
    }
    best = {"rs": math.inf, "stock": math.inf}
    for _ in range(repeats):
        for name in ("rs", "stock"):
            cb = make[name]()
            cb.set_model(model)
            cb.set_params(params)
            model.optimizer.learning_rate = 0.01
            t0 = time.perf_counter()
            cb.on_train_begin({})
            for epoch in range(epochs):
                cb.on_epoch_begin(epoch, {})
                for batch in range(batches):
                    cb.on_train_batch_begin(batch, {})
                    cb.on_train_batch_end(batch, {})
                cb.on_epoch_end(epoch, {})
            cb.on_train_end({})
            best[name] = min(best[name], time.perf_counter() - t0)
    return {k: 1e6 * v / epochs for k, v in best.items()}


def checkpoint_bytes(epochs: int) -> dict:
    x, y = data(5)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, callback in (("rs", rs.LearningRateScheduler(schedule)),
                               ("stock", keras.callbacks.LearningRateScheduler(schedule))):
            model = build()
            model.fit(x, y, epochs=epochs, batch_size=5, verbose=0, callbacks=[callback])
            for ext in ("weights.h5", "keras"):
                path = os.path.join(tmp, f"{name}.{ext}")
                if ext == "keras":
                    model.save(path)
                else:
                    model.save_weights(path)
                sizes[(name, ext)] = os.path.getsize(path)
    return {ext: (sizes[("stock", ext)], sizes[("rs", ext)]) for ext in ("weights.h5", "keras")}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, default=4, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')} on {platform.node()}: "
          f"{cpu_model()}, {os.cpu_count()} CPUs{load}")
    print(f"keras {keras.__version__} ({keras.backend.backend()}), Python {platform.python_version()}, "
          f"{platform.machine()}, resumable_scheduler from {os.path.dirname(rs.__file__)}")
    print(f"fit: {args.epochs} epochs x {args.batches} batches of {args.batch_size}, Dense(10) on 20 inputs, "
          f"{args.repeats} interleaved repeats per variant")
    res = bench_ratio(args.epochs, args.repeats, args.batches, args.batch_size)
    steps = args.epochs * args.batches
    for name, label in (("stock", "keras.callbacks.LearningRateScheduler"), ("rs", "rs.LearningRateScheduler")):
        med = res["median"][name]
        spread = f"{min(res['times'][name]):.3f}-{max(res['times'][name]):.3f}"
        print(f"  {label:<40} median {med:.3f} s  (range {spread} s, {1e6 * med / steps:.0f} us/step)")
    ratio = res["paired"]
    extra = 1e6 * (res["median"]["rs"] - res["median"]["stock"]) / args.epochs
    print(f"fit time ratio rs / stock: {ratio:.3f} (median of paired runs; ratio of medians "
          f"{res['ratio']:.3f}, {extra:+.0f} us per epoch)  goal <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'}")

    print(f"process CPU time ratio rs / stock: {res['cpu_ratio']:.3f} (medians; less disturbed by other load)")
    hooks = hook_cost(args.epochs, args.batches)
    fit_epoch_us = 1e6 * min(res["times"]["stock"]) / args.epochs
    implied = 1 + (hooks["rs"] - hooks["stock"]) / fit_epoch_us
    print(f"callback hooks alone (fastest of 7): stock {hooks['stock']:.0f} us/epoch, rs {hooks['rs']:.0f} us/epoch "
          f"({hooks['rs'] - hooks['stock']:+.0f}); against the fastest stock fit ({fit_epoch_us:.0f} us/epoch) "
          f"that is a ratio of {implied:.3f}")

    print("bytes the state adds to a checkpoint (same model, ours minus stock):")
    for epochs in (15, args.epochs):
        for ext, (stock, ours) in checkpoint_bytes(epochs).items():
            print(f"  after {epochs:>4} epochs, .{ext:<10} {stock:>7} -> {ours:>7} bytes: +{ours - stock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
