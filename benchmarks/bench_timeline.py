"""What keeping the run's timeline costs (issue 11).

    python benchmarks/bench_timeline.py [--epochs 60] [--repeats 9]

Prints, in one run, `fit` wall time of the documented model with
`rs.BackupAndRestore(save_freq=...)` and `rs.LearningRateScheduler`:

1. recording the timeline (as shipped) / with the recorder's hooks made
   no-ops (no timeline item in the checkpoints): goal <= 1.01;
2. the same with a timeline of 1,000 past segments restored first (the
   most a checkpoint keeps), which every commit then writes.

Each repeat runs the variants back to back in a rotating order; the
headline is the median of the per-repeat ratios. Many short epochs with a
save every `--save-freq` batches show a per-batch or per-save cost most.
"""

from __future__ import annotations

import argparse
import datetime
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
from resumable_scheduler import timeline  # noqa: E402
from resumable_scheduler.snapshot import Position  # noqa: E402
from resumable_scheduler.tracker import tracker_for  # noqa: E402

HOOKS = ("begin_fit", "at_position", "batch_begun", "batch_done", "saved", "written_in_background", "end")


def schedule(epoch: int, lr: float) -> float:
    return lr if epoch < 10 else lr * 0.9


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    return model


def long_past() -> dict:
    seg = timeline.Segment("host", 1, 1.0e9, Position(0, 0, 0), Position(1, 2, 3), first_batch=1.0e9 + 5,
                           committed=1.0e9 + 50, end="killed", saves=10, save_interval_s=2.0)
    return timeline.Timeline([seg] * timeline.MAX_SEGMENTS).to_json()


class Off:
    """The recorder's hooks as no-ops, and no timeline in checkpoints."""

    def __enter__(self) -> None:
        self.saved = {name: getattr(timeline.Recorder, name) for name in (*HOOKS, "commit")}
        for name in HOOKS:
            setattr(timeline.Recorder, name, lambda self, *a, **k: None)
        timeline.Recorder.commit = lambda self, position: None

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(timeline.Recorder, name, fn)


def run(variant: str, x: np.ndarray, y: np.ndarray, epochs: int, save_freq: int) -> float:
    model = build()
    model.fit(x[:4], y[:4], epochs=1, verbose=0)  # compile outside the timing
    if variant == "long":
        tracker_for(model).timeline.restore(long_past())
    with tempfile.TemporaryDirectory() as d:
        cbs = [rs.BackupAndRestore(d, save_freq=save_freq, delete_checkpoint=False),
               rs.LearningRateScheduler(schedule)]
        start = time.perf_counter()
        if variant == "off":
            with Off():
                model.fit(x, y, epochs=epochs, batch_size=4, verbose=0, callbacks=cbs)
        else:
            model.fit(x, y, epochs=epochs, batch_size=4, verbose=0, callbacks=cbs)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--save-freq", type=int, default=10)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20)).astype("float32")
    y = rng.normal(size=(64, 10)).astype("float32")
    variants = ["on", "off", "long"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants[r % 3:] + variants[: r % 3]
        for v in order:
            times[v].append(run(v, x, y, args.epochs, args.save_freq))
    on = statistics.median(a / b for a, b in zip(times["on"], times["off"]))
    long = statistics.median(a / b for a, b in zip(times["long"], times["off"]))
    print(f"# {datetime.date.today()} {platform.node()} {platform.processor() or platform.machine()} "
          f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, keras {keras.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"fit: {args.epochs} epochs x {len(x) // 4} batches, a save every {args.save_freq} batches, "
          f"{args.repeats} repeats; medians on {statistics.median(times['on']):.3f} s, "
          f"off {statistics.median(times['off']):.3f} s, long {statistics.median(times['long']):.3f} s")
    print(f"timeline recorded / not recorded: {on:.3f} (goal <= 1.01)")
    print(f"with 1,000 past segments / not recorded: {long:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
