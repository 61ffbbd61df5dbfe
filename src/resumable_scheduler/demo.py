"""The kill-and-resume demo behind `resumable-scheduler demo`.

It trains the documented example of `keras.callbacks.LearningRateScheduler`
(a `Dense(10)` on 20 inputs, SGD at 0.01, 15 epochs, the rate kept for
epochs 0-9 and then multiplied by `exp(-0.1)` each epoch, written with
`keras.ops` so the schedule returns a JAX array) twice:

1. once, uninterrupted, in this process;
2. once in a child process (`python -m resumable_scheduler.demo --child`)
   that is killed with SIGKILL after a random epoch and started again, as
   often as it takes to finish, resuming from its backup directory.

Then it compares the final learning rates (both must print `0.00607`), the
optimizer iterations and the final weights, bit for bit.

Two deliberate differences from the docs' example:

- The targets are `np.zeros((5, 10))`: the docs' `np.zeros(5)` does not
  broadcast against the `(5, 10)` outputs of `Dense(10)` on the JAX and
  torch backends.
- The inputs are `np.arange(100).reshape(5, 20) / 100`. With the docs'
  unscaled inputs (0..99) and `batch_size=1`, SGD diverges: the loss is inf
  after 3 epochs and every weight is NaN after 5, and NaN weights cannot be
  compared bit for bit in any meaningful way. The learning rate does not
  depend on the data, so it still ends at 0.006065...

The batches are not shuffled: stock Keras checkpoints (and the stock
`BackupAndRestore` used here) do not save the NumPy RNG that `fit` shuffles
with, so a resumed process would draw other batch orders.

Example:

>>> model = train(backup_dir=None, epochs=2)
>>> int(model.optimizer.iterations)
10
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import resumable_scheduler as rs  # noqa: E402

EPOCHS = 15
BATCH_SIZE = 1
#: The seed of `keras.utils.set_random_seed` in every run (weights init).
TRAINING_SEED = 1337
#: `round(final_lr, 5)` of the documented example: 0.01 * exp(-0.5).
EXPECTED_LR = 0.00607
WEIGHTS_FILE = "final_weights.npz"
RESULT_FILE = "final.json"


def schedule(epoch: int, lr: float) -> Any:
    """The documented schedule: keep `lr` for epochs 0-9, then decay it."""
    if epoch < 10:
        return lr
    else:
        return lr * ops.exp(-0.1)


def data() -> tuple[np.ndarray, np.ndarray]:
    """Inputs `arange(100).reshape(5, 20) / 100` and targets `zeros((5, 10))`."""
    x = (np.arange(100).reshape(5, 20) / 100).astype("float32")
    y = np.zeros((5, 10), dtype="float32")
    return x, y


def build_model(seed: int = TRAINING_SEED) -> keras.Model:
    """The documented model, compiled with SGD (0.01) and mse."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def make_backup(backup_dir: str) -> keras.callbacks.Callback:
    """The backup callback the killed child resumes from."""
    return keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch")


class _Progress(keras.callbacks.Callback):
    """Prints `epoch N` (N epochs done) after the backup of epoch N is written,
    then, with `wait=True`, blocks until the parent answers on stdin, so a
    SIGKILL lands between epochs (where the stock backup is consistent)."""

    def __init__(self, wait: bool) -> None:
        super().__init__()
        self.wait = wait

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(f"epoch {epoch + 1}", flush=True)
        if self.wait:
            sys.stdin.readline()


def train(
    backup_dir: str | None,
    epochs: int = EPOCHS,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> keras.Model:
    """Builds and trains the documented model, resuming from `backup_dir`."""
    model = build_model()
    x, y = data()
    cbs: list[keras.callbacks.Callback] = []
    if backup_dir is not None:
        cbs.append(make_backup(backup_dir))
    cbs.append(rs.LearningRateScheduler(schedule))
    cbs.extend(callbacks or [])
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=False,
              callbacks=cbs, verbose=0)
    return model


def summarize(model: keras.Model) -> dict[str, Any]:
    opt = model.optimizer
    return {
        "learning_rate": float(ops.convert_to_numpy(opt.learning_rate)),
        "iterations": int(ops.convert_to_numpy(opt.iterations)),
    }


def save_result(model: keras.Model, workdir: str) -> None:
    """Writes the weights (`.npz`, NumPy only) and the lr/iterations (JSON)."""
    np.savez(os.path.join(workdir, WEIGHTS_FILE), *model.get_weights())
    with open(os.path.join(workdir, RESULT_FILE), "w", encoding="utf-8") as f:
        json.dump(summarize(model), f)


def load_result(workdir: str) -> tuple[dict[str, Any], list[np.ndarray]]:
    with open(os.path.join(workdir, RESULT_FILE), encoding="utf-8") as f:
        result = json.load(f)
    with np.load(os.path.join(workdir, WEIGHTS_FILE), allow_pickle=False) as z:
        weights = [z[f"arr_{i}"] for i in range(len(z.files))]
    return result, weights


def _child(workdir: str) -> int:
    model = train(os.path.join(workdir, "backup"), callbacks=[_Progress(wait=True)])
    save_result(model, workdir)
    print("done", flush=True)
    return 0


def _start_child(workdir: str, log: Any) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return subprocess.Popen(
        [sys.executable, "-m", "resumable_scheduler.demo", "--child", "--workdir", workdir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _run_child(workdir: str, run: int, kill_after: int | None) -> tuple[bool, int]:
    """Runs one child; SIGKILLs it once it reports `kill_after` epochs done.

    Returns `(killed, epochs reported done)`.
    """
    log_path = os.path.join(workdir, f"child-{run}.log")
    with open(log_path, "w", encoding="utf-8") as log:
        return _watch_child(_start_child(workdir, log), kill_after, log_path)


def _watch_child(proc: subprocess.Popen, kill_after: int | None, log_path: str) -> tuple[bool, int]:
    assert proc.stdin is not None and proc.stdout is not None
    done = 0
    try:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("epoch "):
                done = int(line.split()[1])
                if kill_after is not None and done >= kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True, done
                proc.stdin.write("\n")
                proc.stdin.flush()
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            err = f.read()
        raise RuntimeError(f"The demo's child process failed (exit {proc.returncode}):\n{err[-3000:]}")
    return False, done


def run_demo(
    seed: int | None = None,
    kills: int = 1,
    workdir: str | None = None,
    out: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Runs the demo and returns what it found.

    Args:
        seed: int, optional. Seeds the choice of the epochs after which the
            child is killed (None: random). Training itself always uses
            `TRAINING_SEED`.
        kills: int. How many times the child is SIGKILLed before it is
            allowed to finish (at distinct epochs 1..14).
        workdir: str, optional. Where the child keeps its backup and results
            (default: a temporary directory, removed at the end).
        out: Callable, optional. Receives the progress lines (None: quiet).

    Returns:
        A dict with `reference` and `resumed` (each `learning_rate`,
        `iterations`), `killed_after` (the epochs done at each kill),
        `runs`, `weights_equal`, `ok` and `seconds`.
    """
    say = out or (lambda _msg: None)
    t0 = time.perf_counter()
    if kills < 0 or kills > EPOCHS - 1:
        raise ValueError(
            f"Invalid value for argument `kills`. Received: kills={kills}. "
            f"Expected an integer from 0 to {EPOCHS - 1}."
        )
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="rs-demo-") as tmp:
            return run_demo(seed=seed, kills=kills, workdir=tmp, out=out)
    os.makedirs(workdir, exist_ok=True)
    rng = random.Random(seed)
    kill_points = sorted(rng.sample(range(1, EPOCHS), kills))

    say(f"[1/2] Training the documented example uninterrupted ({EPOCHS} epochs, batch_size={BATCH_SIZE})...")
    model = train(backup_dir=None)
    reference = summarize(model)
    ref_weights = model.get_weights()
    say(f"      learning rate {reference['learning_rate']:.5f}, iterations {reference['iterations']}")

    say(f"[2/2] Training it in a child process, SIGKILLed after epoch(s) {kill_points}, "
        f"resuming from {os.path.join(workdir, 'backup')}...")
    killed_after: list[int] = []
    runs = 0
    pending = list(kill_points)
    while True:
        runs += 1
        target = pending[0] if pending else None
        killed, done = _run_child(workdir, runs, target)
        if not killed:
            say(f"      run {runs}: finished all {done} epochs")
            break
        killed_after.append(done)
        pending = [k for k in pending if k > done]
        saved = rs.read_state(os.path.join(workdir, "backup"))
        say(f"      run {runs}: SIGKILL after epoch {done}; the backup resumes at epoch "
            f"{saved['epoch']}, learning rate {saved['learning_rate']:.6g}")
        if runs > EPOCHS + 2:
            raise RuntimeError("The demo's child made no progress across restarts.")
    resumed, weights = load_result(workdir)

    weights_equal = len(weights) == len(ref_weights) and all(
        a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ref_weights, weights)
    )
    ok = (
        round(reference["learning_rate"], 5) == EXPECTED_LR
        and round(resumed["learning_rate"], 5) == EXPECTED_LR
        and reference["iterations"] == resumed["iterations"]
        and weights_equal
    )
    seconds = time.perf_counter() - t0
    say("")
    say(f"uninterrupted:       learning rate {round(reference['learning_rate'], 5)}, "
        f"iterations {reference['iterations']}")
    say(f"killed and resumed:  learning rate {round(resumed['learning_rate'], 5)}, "
        f"iterations {resumed['iterations']} ({len(killed_after)} SIGKILL, {runs} runs)")
    say(f"weights match bit for bit: {weights_equal}")
    say(f"{'OK' if ok else 'FAILED'} in {seconds:.1f} s")
    return {
        "reference": reference,
        "resumed": resumed,
        "killed_after": killed_after,
        "runs": runs,
        "weights_equal": weights_equal,
        "ok": ok,
        "seconds": seconds,
        "workdir": workdir,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resumable_scheduler.demo")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.child:
        if not args.workdir:
            parser.error("--child needs --workdir")
        return _child(args.workdir)
    return 0 if run_demo(seed=args.seed, kills=args.kills, workdir=args.workdir)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
