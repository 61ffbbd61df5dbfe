"""The kill-and-resume check on a GPU (run by scripts/gpu_check.sh).

Trains the documented `LearningRateScheduler` example (rate kept for epochs
0-9, then multiplied by exp(-0.1) each epoch, SGD at 0.01, 15 epochs) on a
small MLP with dropout, on the GPU:

1. once uninterrupted, in a child process;
2. for each of `rs.OrbaxCheckpoint` and `rs.BackupAndRestore` (both saving
   every 3 batches): in a child process that is SIGKILLed after a random
   number of batches, `--kills` times, then run again until it finishes,
   resuming by itself each time.

The children are killed and restarted by `resumable_scheduler.harness`
(they print `start` and `batch E B`, its line protocol).

It prints every final learning rate (each must round to 0.00607), the
optimizer iterations and whether the final weights equal the uninterrupted
run's bit for bit. Then, in one more child, it measures how long the
training thread is blocked per save of about 50 MB of state, with the
measuring code of `benchmarks/bench_backup.py` and `benchmarks/bench_orbax.py`
(imported from the repository's `benchmarks/`): `rs.BackupAndRestore` (goal
<= 10 ms), `rs.OrbaxCheckpoint` (goal <= 50 ms), with stock Keras, the
synchronous path and a host copy of the state for scale. The goals are
reported, not enforced. It exits 0 only if everything matches and the
measures ran (`--no-blocking` skips them). The XLA flags for deterministic
GPU kernels are set by gpu_check.sh (and here, if missing).

    python scripts/gpu_check.py [--kills 2] [--seed N] [--workdir DIR] [--cpu-ok]
        [--no-blocking] [--blocking-saves 8] [--blocking-every 40] [--blocking-batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from resumable_scheduler import harness

DETERMINISTIC_XLA = "--xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0"
EPOCHS, SAMPLES, BATCH = 15, 40, 4  # 10 batches an epoch, 150 in all
EXPECTED_LR = 0.00607
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
#: Blocking-time goals per save of about 50 MB of state (ms).
GOAL_BACKUP_MS, GOAL_ORBAX_MS = 10.0, 50.0
#: Seconds one check (all runs of one child) may take.
CHILD_TIMEOUT_S = 240.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags = env.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        env["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA}".strip()
    return env


# -- the child: one training run ---------------------------------------------------


def child(kind: str, directory: str, out: str) -> int:
    import keras
    import numpy as np
    from keras import ops

    import resumable_scheduler as rs

    def schedule(epoch, lr):
        return lr if epoch < 10 else lr * ops.exp(-0.1)

    class Progress(keras.callbacks.Callback):
        """The harness's line protocol: `start`, then `batch E B`."""

        epoch = 0

        def on_train_begin(self, logs=None):
            print("start", flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            print(f"batch {self.epoch} {batch}", flush=True)

    keras.utils.set_random_seed(1337)
    x = (np.arange(SAMPLES * 20, dtype="float32").reshape(SAMPLES, 20) / (SAMPLES * 20))
    y = np.zeros((SAMPLES, 10), dtype="float32")
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(), loss="mse")
    callbacks = [rs.LearningRateScheduler(schedule)]
    if kind == "orbax":
        callbacks.append(rs.OrbaxCheckpoint(directory, save_freq=3))
    elif kind == "backup":
        callbacks.append(rs.BackupAndRestore(directory, save_freq=3))
    callbacks.append(Progress())
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, callbacks=callbacks, verbose=0)
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "weights.npz"), *[np.asarray(w) for w in model.get_weights()])
    import jax

    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({
            "lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
            "iterations": int(ops.convert_to_numpy(model.optimizer.iterations)),
            "device": str(model.weights[0].value.devices().pop()),
            "backend": jax.default_backend(),
        }, f)
    print("done", flush=True)
    return 0


# -- blocking time per save (a child too: the parent never touches the GPU) ---------


def orbax_blocked(bench_backup, bench_orbax, saves: int, every: int, batch_size: int) -> tuple[float, int]:
    """Median seconds `rs.OrbaxCheckpoint(save_freq=every)` blocks the
    training thread per save (the first two left out) on `bench_orbax`'s
    50 MB model, timed by `bench_backup.timed_batch_ends`; and the state's bytes."""
    import numpy as np

    import resumable_scheduler as rs

    model = bench_orbax.build(3072)
    steps = saves * every + every // 2  # every save mid-epoch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * batch_size, 1024), dtype=np.float32)
    y = rng.standard_normal((steps * batch_size, 10), dtype=np.float32)
    model.fit(x[:batch_size * 2], y[:batch_size * 2], batch_size=batch_size, verbose=0)  # compile
    blocked: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rs_gpu_orbax_") as d:
        cb = rs.OrbaxCheckpoint(d, save_freq=every)
        bench_backup.timed_batch_ends(cb, every, blocked)
        model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False, callbacks=[cb], verbose=0)
    return statistics.median(blocked[2:] or blocked), bench_backup.state_bytes(model)


def measure(out: str, saves: int, every: int, batch_size: int) -> int:
    """The measuring child: writes the blocked times (seconds) to `out` (JSON)."""
    sys.path.insert(0, BENCHMARKS)
    import bench_backup
    import bench_orbax

    r = bench_backup.bench_blocked(saves, every, batch_size)
    orbax, orbax_bytes = orbax_blocked(bench_backup, bench_orbax, saves, every, batch_size)
    with open(out, "w") as f:
        json.dump({
            "backup_bytes": r["state_bytes"], "host_copy": r["host_copy"],
            "backup_background": r["background"][0], "backup_sync": r["sync"][0],
            "backup_stock": r["stock"][0], "orbax": orbax, "orbax_bytes": orbax_bytes,
        }, f)
    return 0


def report_blocking(m: dict) -> list[str]:
    """The lines that report the measures against the goals."""

    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"

    def goal(seconds, limit_ms):
        if seconds is None:
            return f"goal <= {limit_ms:.0f} ms: not measured, too few saves"
        return f"goal <= {limit_ms:.0f} ms: {'met' if seconds * 1e3 <= limit_ms else 'not met'}"

    rows = [
        (f"rs.BackupAndRestore (background, {m['backup_bytes'] / 1e6:.1f} MB)", m["backup_background"],
         GOAL_BACKUP_MS),
        (f"rs.OrbaxCheckpoint ({m['orbax_bytes'] / 1e6:.1f} MB)", m["orbax"], GOAL_ORBAX_MS),
    ]
    return [
        f"training thread blocked per save (median; a save every {m['every']} batches of {m['batch']}):",
        *(f"  {label:42}{ms(seconds):>10}  ({goal(seconds, limit)})" for label, seconds, limit in rows),
        f"  for scale: rs.BackupAndRestore(save_on_background=False) {ms(m['backup_sync'])}, "
        f"stock keras.callbacks.BackupAndRestore {ms(m['backup_stock'])}, "
        f"host copy of the state {ms(m['host_copy'])}",
    ]


# -- the parent --------------------------------------------------------------------


def _command(kind: str, directory: str, out: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", kind, directory, out]


def _result(out: str):
    import numpy as np

    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        res["weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
    return res


def run_to_end(kind: str, work: str, kills: int, rng: random.Random) -> tuple[dict, int]:
    """Runs the `kind` child to the end, SIGKILLed `kills` times (each after
    2 to 40 batches of its run); its runs' stderr go to `work/KIND-N.log`."""
    directory, out = os.path.join(work, kind), os.path.join(work, f"{kind}-out")
    plan = harness.random_kills(kills, rng, after_lines=(2, 40))
    try:
        record = harness.run_until_done(_command(kind, directory, out), plan, env=_env(), log_dir=work,
                                        log_name=kind, timeout=CHILD_TIMEOUT_S, name=f"The {kind} child")
    except (harness.ChildFailed, harness.ChildTimeout) as e:
        raise SystemExit(f"{kind}: {e}\n(logs: {work}/{kind}-*.log)") from None
    return _result(out), len(record.kills)


def run_measures(work: str, saves: int, every: int, batch: int) -> tuple[dict | None, str]:
    """Runs the measuring child; returns (measures, '') or (None, why not)."""
    if not os.path.isfile(os.path.join(BENCHMARKS, "bench_backup.py")):
        return None, f"no {BENCHMARKS}/bench_backup.py (run from a copy of the repository)"
    out = os.path.join(work, "blocking.json")
    command = [sys.executable, os.path.abspath(__file__), "--measure", out, "--blocking-saves", str(saves),
               "--blocking-every", str(every), "--blocking-batch", str(batch)]
    try:
        harness.run_until_done(command, env=_env(), log_dir=work, log_name="blocking",
                               timeout=CHILD_TIMEOUT_S, name="The blocking-time child")
    except (harness.ChildFailed, harness.ChildTimeout) as e:
        return None, f"{e}\n(log: {work}/blocking-1.log)"
    with open(out) as f:
        m = json.load(f)
    m.update(every=every, batch=batch)
    return m, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kill-and-resume check on a GPU")
    p.add_argument("--child", nargs=3, metavar=("KIND", "DIR", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--cpu-ok", action="store_true", help="do not fail when no GPU is used")
    p.add_argument("--no-blocking", action="store_true", help="skip the blocking-time measures")
    p.add_argument("--blocking-saves", type=int, default=8, help="saves timed per callback (first 2 left out)")
    p.add_argument("--blocking-every", type=int, default=40, help="batches between saves")
    p.add_argument("--blocking-batch", type=int, default=64, help="batch size of the measures")
    p.add_argument("--measure", metavar="OUT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(*a.child)
    if a.measure:
        return measure(a.measure, a.blocking_saves, a.blocking_every, a.blocking_batch)

    import numpy as np

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = a.workdir or tempfile.mkdtemp(prefix="rs_gpu_check_")
    os.makedirs(work, exist_ok=True)
    t0 = time.monotonic()
    print(f"XLA_FLAGS={_env()['XLA_FLAGS']!r}  seed={seed}  workdir={work}", flush=True)
    run_to_end("none", work, 0, rng)  # the reference: never killed, no checkpoints
    ref = _result(os.path.join(work, "none-out"))
    print(f"device: {ref['device']} (jax backend {ref['backend']})")
    print(f"uninterrupted:            final lr {ref['lr']:.7f} (round 5: {round(ref['lr'], 5)}), "
          f"iterations {ref['iterations']}", flush=True)
    ok = round(ref["lr"], 5) == EXPECTED_LR and ref["iterations"] == EPOCHS * SAMPLES // BATCH
    if ref["backend"] != "gpu" and not a.cpu_ok:
        print("FAIL: JAX did not run on a GPU (pass --cpu-ok to check the CPU path)")
        ok = False
    for kind, label in (("orbax", "rs.OrbaxCheckpoint"), ("backup", "rs.BackupAndRestore")):
        got, kills = run_to_end(kind, work, a.kills, rng)
        same = len(got["weights"]) == len(ref["weights"]) and all(
            np.array_equal(x, y) for x, y in zip(got["weights"], ref["weights"]))
        print(f"{label + f' ({kills} kills):':26}final lr {got['lr']:.7f} (round 5: {round(got['lr'], 5)}), "
              f"iterations {got['iterations']}, weights match: {same}", flush=True)
        ok = ok and same and got["lr"] == ref["lr"] and got["iterations"] == ref["iterations"]
    if not a.no_blocking:
        measures, why = run_measures(work, a.blocking_saves, a.blocking_every, a.blocking_batch)
        if measures is None:
            print(f"FAIL: the blocking-time measures did not run: {why}")
            ok = False
        else:
            print("\n".join(report_blocking(measures)), flush=True)
    print(f"\n{'PASS' if ok else 'FAIL'} in {time.monotonic() - t0:.0f} s")
    if ok and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
