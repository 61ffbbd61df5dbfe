"""Save and resume time of rs.BackupAndRestore on each storage back end.

    python -m benchmarks.bench_storage [--saves 8] [--url s3://bucket/prefix ...]

Run from the repository root. With no `--url`, it starts the test servers
the suite uses (moto's S3 server and fake-gcs-server, on 127.0.0.1 only,
from `tests/support/servers.py`, so a checkout with the `[test]` extra is
needed) and measures a local directory, `s3://` and `gs://`. With `--url`
(repeatable) it measures those instead, reaching them through the standard
client variables (`AWS_*`, `STORAGE_EMULATOR_HOST`, application
credentials).

Prints, for each back end, with a small model (about 6 MB of state):
- the time the training thread is blocked per save (a save every
  `--every` batches), with `save_on_background=False` (the whole write and
  commit) and `True` (the host copy; the write overlaps training, and a
  save waits for the previous write only if it is still running), median
  over `--saves` saves, the first left out;
- the resume time: from `fit`'s start to its first trained batch, with the
  newest checkpoint read back from that store (median of 3);
- every ratio against the local directory in the same run.

Absolute times depend on the machine and (for buckets) on the network; only
the ratios in one run are comparable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

BATCH = 32
SAMPLES = 32 * 48


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024), keras.layers.Dense(1024),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((SAMPLES, 256), dtype=np.float32), rng.random((SAMPLES, 10), dtype=np.float32)


class _BlockedTimer(keras.callbacks.Callback):
    """Times what runs after it in the batch end of the callback list: put
    it first, the backup second, `_Stop` third."""

    def __init__(self, sink: list[float]) -> None:
        super().__init__()
        self.sink = sink
        self.t0 = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.t0 = time.perf_counter()


class _After(keras.callbacks.Callback):
    def __init__(self, timer: _BlockedTimer) -> None:
        super().__init__()
        self.timer = timer

    def on_train_batch_end(self, batch, logs=None):
        self.timer.sink.append(time.perf_counter() - self.timer.t0)


def blocked_per_save(url: str, background: bool, saves: int, every: int) -> float:
    """Median seconds the training thread spends in the backup's batch end
    at a save (a save every `every` batches)."""
    sink: list[float] = []
    timer = _BlockedTimer(sink)
    x, y = data()
    model = make_model()
    backup = rs.BackupAndRestore(url, save_freq=every, save_on_background=background, delete_checkpoint=True)
    steps = min((saves + 1) * every, SAMPLES // BATCH)
    model.fit(x[: steps * BATCH], y[: steps * BATCH], batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[timer, backup, _After(timer)])
    at_saves = sink[every - 1::every]
    return statistics.median(at_saves[1:])


def resume_time(url: str, repeats: int = 3) -> float:
    """Median seconds from `fit`'s start to its first batch, resuming mid-epoch."""
    x, y = data()

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                raise KeyboardInterrupt

    model = make_model()
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[rs.BackupAndRestore(url, save_freq=1, save_on_background=False), Stop()])
    except KeyboardInterrupt:
        pass
    times = []
    for _ in range(repeats):
        model = make_model()
        model.predict(x[:1], verbose=0)  # build outside the timed part, as for stock

        class First(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                raise KeyboardInterrupt

        t0 = time.perf_counter()
        try:
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[rs.BackupAndRestore(url, save_freq=1, save_on_background=False), First()])
        except KeyboardInterrupt:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, url: str, saves: int, every: int) -> dict[str, float]:
    out = {
        "sync": blocked_per_save(url + "/sync", False, saves, every),
        "background": blocked_per_save(url + "/background", True, saves, every),
        "resume": resume_time(url + "/resume"),
    }
    print(f"  {name:<8} blocked per save: sync {out['sync'] * 1e3:7.1f} ms, background "
          f"{out['background'] * 1e3:6.1f} ms; resume {out['resume']:.2f} s", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=8)
    p.add_argument("--every", type=int, default=20, help="batches between saves")
    p.add_argument("--url", action="append", default=[], help="a store to measure (repeatable)")
    a = p.parse_args()
    servers = None
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("local", os.path.join(tmp, "local"))]
        if a.url:
            targets += [(u.split("://", 1)[0], u.rstrip("/")) for u in a.url]
        else:
            from tests.support import servers as test_servers

            os.makedirs(os.path.join(tmp, "logs"))
            servers = test_servers.start_all(os.path.join(tmp, "logs"))
            for scheme, server in servers.items():
                if server.missing:
                    print(f"  {scheme}: not measured ({server.missing} is not installed)")
                    continue
                os.environ.update(server.env)
                targets.append((scheme, f"{scheme}://{server.make_bucket()}/bench"))
        print(f"rs.BackupAndRestore, {keras.backend.backend()} backend, a save every {a.every} batches of {BATCH}:")
        try:
            results = {name: measure(name, url, a.saves, a.every) for name, url in targets}
        finally:
            if servers is not None:
                test_servers.stop_all(servers)
    base = results["local"]
    for name, r in results.items():
        if name != "local":
            print(f"  ratio {name}/local: sync save {r['sync'] / base['sync']:.2f}, background save "
                  f"{r['background'] / base['background']:.2f}, resume {r['resume'] / base['resume']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
