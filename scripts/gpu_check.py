"""The kill-and-resume check on a GPU (run by scripts/gpu_check.sh).

Trains the documented `LearningRateScheduler` example (rate kept for epochs
0-9, then multiplied by exp(-0.1) each epoch, SGD at 0.01, 15 epochs) on a
small MLP with dropout, on the GPU:

1. once uninterrupted, in a child process;
2. for each of `rs.OrbaxCheckpoint` and `rs.BackupAndRestore` (both saving
   every 3 batches): in a child process that is SIGKILLed after a random
   number of batches, `--kills` times, then run again until it finishes,
   resuming by itself each time.

It prints every final learning rate (each must round to 0.00607), the
optimizer iterations and whether the final weights equal the uninterrupted
run's bit for bit, and exits 0 only if everything matches. The XLA flags for
deterministic GPU kernels are set by gpu_check.sh (and here, if missing).

    python scripts/gpu_check.py [--kills 2] [--seed N] [--workdir DIR] [--cpu-ok]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DETERMINISTIC_XLA = "--xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0"
EPOCHS, SAMPLES, BATCH = 15, 40, 4  # 10 batches an epoch, 150 in all
EXPECTED_LR = 0.00607


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
        def on_train_batch_end(self, batch, logs=None):
            print("batch", flush=True)

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
    print("start", flush=True)
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


# -- the parent --------------------------------------------------------------------


def _start(kind: str, directory: str, out: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", kind, directory, out],
        stdout=subprocess.PIPE, stderr=log, text=True, env=_env(),
    )


def _result(out: str):
    import numpy as np

    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        res["weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
    return res


def run_to_end(kind: str, work: str, kills: int, rng: random.Random) -> tuple[dict, int]:
    directory, out = os.path.join(work, kind), os.path.join(work, f"{kind}-out")
    done_kills = 0
    with open(os.path.join(work, f"{kind}.log"), "w") as log:
        for _ in range(kills):
            proc = _start(kind, directory, out, log)
            budget = rng.randint(2, 40)
            seen = 0
            for line in proc.stdout:
                if line.strip() == "batch":
                    seen += 1
                    if seen >= budget:
                        proc.send_signal(signal.SIGKILL)
                        break
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                done_kills += 1
            elif proc.returncode != 0:
                raise SystemExit(f"{kind}: child failed with status {proc.returncode}; see {log.name}")
        proc = _start(kind, directory, out, log)
        proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{kind}: child failed with status {proc.returncode}; see {log.name}")
    return _result(out), done_kills


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kill-and-resume check on a GPU")
    p.add_argument("--child", nargs=3, metavar=("KIND", "DIR", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--cpu-ok", action="store_true", help="do not fail when no GPU is used")
    a = p.parse_args(argv)
    if a.child:
        return child(*a.child)

    import numpy as np

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = a.workdir or tempfile.mkdtemp(prefix="rs_gpu_check_")
    os.makedirs(work, exist_ok=True)
    t0 = time.monotonic()
    print(f"XLA_FLAGS={_env()['XLA_FLAGS']!r}  seed={seed}  workdir={work}", flush=True)
    with open(os.path.join(work, "reference.log"), "w") as log:
        proc = _start("none", os.path.join(work, "unused"), os.path.join(work, "ref-out"), log)
        proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed with status {proc.returncode}; see {work}/reference.log")
    ref = _result(os.path.join(work, "ref-out"))
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
    print(f"\n{'PASS' if ok else 'FAIL'} in {time.monotonic() - t0:.0f} s")
    if ok and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
