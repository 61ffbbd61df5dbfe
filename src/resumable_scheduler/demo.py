"""The kill-and-resume demo behind `resumable-scheduler demo`.

It trains the documented example of `keras.callbacks.LearningRateScheduler`
(a `Dense(10)` on 20 inputs, SGD at 0.01, 15 epochs of 5 batches, the rate
kept for epochs 0-9 and then multiplied by `exp(-0.1)` each epoch, written
with `keras.ops` so the schedule returns a JAX array) twice:

1. once, uninterrupted, in this process, with no backup callback at all;
2. once in a child process (`python -m resumable_scheduler.demo --child`)
   that backs up with `rs.BackupAndRestore(backup_dir, save_freq=1)` (a
   checkpoint after every batch) and is killed with SIGKILL at random
   batches, then started again, as often as it takes to finish. The child
   prints `batch E B` after each batch and goes on without waiting; the
   parent kills it after a random number of printed batches plus a random
   few milliseconds, so the kill lands at a random instant: inside a batch,
   between batches or inside a checkpoint write. The killing and
   restarting is `resumable_scheduler.harness.run_until_done`.

Both runs shuffle the batches (`shuffle=True`, Keras's default):
`rs.BackupAndRestore` saves the host RNGs with each checkpoint, so the
resumed process draws the same batch orders as the uninterrupted one.

Then it compares the final learning rates (both must print `0.00607`), the
optimizer iterations (75) and the final weights, bit for bit.

`run_demo(backup="stock")` keeps the stock variant, which the tests use to
document stock behaviour: stock `keras.callbacks.BackupAndRestore(
save_freq="epoch")`, `shuffle=False` (stock checkpoints do not hold the
NumPy RNG that `fit` shuffles with), and kills only between epochs (the
child waits on stdin after each epoch, where the stock backup is whole).

Two deliberate differences from the docs' example:

- The targets are `np.zeros((5, 10))`: the docs' `np.zeros(5)` does not
  broadcast against the `(5, 10)` outputs of `Dense(10)` on the JAX and
  torch backends.
- The inputs are `np.arange(100).reshape(5, 20) / 100`. With the docs'
  unscaled inputs (0..99) and `batch_size=1`, SGD diverges: the loss is inf
  after 3 epochs and every weight is NaN after 5, and NaN weights cannot be
  compared bit for bit in any meaningful way. The learning rate does not
  depend on the data, so it still ends at 0.006065...

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
import dataclasses  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import resumable_scheduler as rs  # noqa: E402
from resumable_scheduler import harness  # noqa: E402

EPOCHS = 15
BATCH_SIZE = 1
#: 5 samples, `batch_size=1`.
BATCHES_PER_EPOCH = 5
TOTAL_BATCHES = EPOCHS * BATCHES_PER_EPOCH
#: The seed of `keras.utils.set_random_seed` in every run (weights init).
TRAINING_SEED = 1337
#: `round(final_lr, 5)` of the documented example: 0.01 * exp(-0.5).
EXPECTED_LR = 0.00607
WEIGHTS_FILE = "final_weights.npz"
RESULT_FILE = "final.json"
#: The resumed run's finished model (`model.save`): its timeline shows what the kills cost.
FINAL_MODEL = "final.keras"
#: The backups the child can use: ours (the demo) or stock Keras's (tests).
BACKUPS = ("rs", "stock")
#: SIGKILLs per run of the demo, unless told otherwise.
DEFAULT_KILLS = 3
#: After the chosen `batch E B` line, the parent waits a random time in
#: [0, KILL_JITTER_S) before the SIGKILL, so that it lands at any instant of
#: the following batch (training it or committing its checkpoint).
KILL_JITTER_S = 0.02
#: Seconds all the child's runs together may take before the demo gives up.
CHILD_TIMEOUT_S = 900.0


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


def _check_backup(backup: str) -> None:
    if backup not in BACKUPS:
        raise ValueError(
            f"Invalid value for argument `backup`. Received: backup={backup!r}. "
            f"Expected one of {BACKUPS}."
        )


def make_backup(backup_dir: str, backup: str = "rs") -> keras.callbacks.Callback:
    """The backup callback the killed child resumes from.

    `"rs"`: `rs.BackupAndRestore(backup_dir, save_freq=1)`, a checkpoint
    after every batch. `"stock"`: `keras.callbacks.BackupAndRestore(
    backup_dir, save_freq="epoch")`.
    """
    _check_backup(backup)
    if backup == "rs":
        return rs.BackupAndRestore(backup_dir, save_freq=1)
    return keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch")


class _EpochProgress(keras.callbacks.Callback):
    """Stock child: prints `epoch E` (epoch E, from 0, is done) after the
    backup of epoch E is written, then blocks until the parent answers on stdin, so a
    SIGKILL lands between epochs (where the stock backup is consistent)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(f"epoch {epoch}", flush=True)
        sys.stdin.readline()


class _BatchProgress(keras.callbacks.Callback):
    """Our child: prints `batch E B` after batch B of epoch E (both from 0)
    and goes straight on; the parent kills it whenever it likes."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        print(f"batch {self.epoch} {batch}", flush=True)


def train(
    backup_dir: str | None,
    epochs: int = EPOCHS,
    callbacks: list[keras.callbacks.Callback] | None = None,
    shuffle: bool = False,
    backup: str = "rs",
) -> keras.Model:
    """Builds and trains the documented model, resuming from `backup_dir`.

    Args:
        backup_dir: str or None. Where `make_backup(backup_dir, backup)`
            keeps its checkpoints; None trains with no backup callback.
        epochs: int. Epochs to train.
        callbacks: list, optional. More callbacks, after the backup and
            `rs.LearningRateScheduler(schedule)`.
        shuffle: bool. Passed to `fit`. False by default, the setting the
            stock-checkpoint tests compare against; the demo's own runs use
            True.
        backup: `"rs"` or `"stock"`, see `make_backup`.
    """
    model = build_model()
    x, y = data()
    cbs: list[keras.callbacks.Callback] = []
    if backup_dir is not None:
        cbs.append(make_backup(backup_dir, backup))
    cbs.append(rs.LearningRateScheduler(schedule))
    cbs.extend(callbacks or [])
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=shuffle,
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


def _child(workdir: str, backup: str) -> int:
    backup_dir = os.path.join(workdir, "backup")
    if backup == "rs":
        model = train(backup_dir, shuffle=True, backup="rs", callbacks=[_BatchProgress()])
        # The finished run, with its timeline (the backup is deleted at the end).
        model.save(os.path.join(workdir, FINAL_MODEL))
    else:
        model = train(backup_dir, shuffle=False, backup="stock", callbacks=[_EpochProgress()])
    save_result(model, workdir)
    print("done", flush=True)
    return 0


def _child_command(workdir: str, backup: str) -> list[str]:
    return [sys.executable, "-m", "resumable_scheduler.demo", "--child",
            "--backup", backup, "--workdir", workdir]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _position(done: int) -> tuple[int, int]:
    """(epoch, batches done in it) after `done` batches in all."""
    return divmod(done, BATCHES_PER_EPOCH)


def run_demo(
    seed: int | None = None,
    kills: int = DEFAULT_KILLS,
    workdir: str | None = None,
    out: Callable[[str], None] | None = print,
    backup: str = "rs",
    *,
    _temporary: bool = False,
) -> dict[str, Any]:
    """Runs the demo and returns what it found.

    Args:
        seed: int, optional. Seeds where the child is killed (None: random).
            Training itself always uses `TRAINING_SEED`.
        kills: int. How many times the child is SIGKILLed before it is
            allowed to finish: after distinct random batches 1..74 of the 75
            (`backup="rs"`), or after distinct epochs 1..14 (`"stock"`).
        workdir: str, optional. Where the child keeps its backup and results
            (default: a temporary directory, removed at the end).
        out: Callable, optional. Receives the progress lines (None: quiet).
        backup: `"rs"` (the demo: `rs.BackupAndRestore(save_freq=1)`,
            shuffled batches, kills at random instants) or `"stock"` (stock
            `keras.callbacks.BackupAndRestore(save_freq="epoch")`, no
            shuffling, kills between epochs).

    Returns:
        A dict with `reference` and `resumed` (each `learning_rate`,
        `iterations`), `killed_after` (at each kill, the batches in all
        (`"rs"`) or the epochs (`"stock"`) the child had reported done),
        `killed_at` and `checkpoints` (at each kill, the `(epoch, batch)`
        the child had reported and the one its backup resumes from; None
        when no checkpoint had been committed yet), `inside_write` (kills
        that left a half-written checkpoint behind), `runs`, `record` (the
        `resumable_scheduler.harness.RunRecord` of the child's runs),
        `weights_equal`, `goodput` (`rs.goodput` of the finished model:
        what the kills cost; None for `"stock"`), `ok`, `seconds` and
        `workdir`.
    """
    _check_backup(backup)
    say = out or (lambda _msg: None)
    t0 = time.perf_counter()
    per_batch = backup == "rs"
    units = TOTAL_BATCHES if per_batch else EPOCHS
    if isinstance(kills, bool) or not isinstance(kills, int) or kills < 0 or kills > units - 1:
        raise ValueError(
            f"Invalid value for argument `kills`. Received: kills={kills}. "
            f"Expected an integer from 0 to {units - 1}."
        )
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="rs-demo-") as tmp:
            return run_demo(seed=seed, kills=kills, workdir=tmp, out=out, backup=backup, _temporary=True)
    os.makedirs(workdir, exist_ok=True)
    backup_dir = os.path.join(workdir, "backup")
    plan = harness.random_kills(kills, seed, at_batches=range(1, units),
                                jitter=KILL_JITTER_S if per_batch else 0.0)
    kill_points = [k.at_batch for k in plan]
    if not per_batch:  # the stock child reports whole epochs: kill after epoch N
        plan = [dataclasses.replace(k, at_batch=k.at_batch * BATCHES_PER_EPOCH) for k in plan]

    say(f"[1/2] Training the documented example uninterrupted, no backup "
        f"({EPOCHS} epochs x {BATCHES_PER_EPOCH} batches, batch_size={BATCH_SIZE}, "
        f"shuffle={per_batch})...")
    model = train(backup_dir=None, shuffle=per_batch)
    reference = summarize(model)
    ref_weights = model.get_weights()
    say(f"      learning rate {reference['learning_rate']:.5f}, iterations {reference['iterations']}")

    if per_batch:
        say(f"[2/2] Training it in a child process with rs.BackupAndRestore(save_freq=1), "
            f"SIGKILLed {kills} time(s) at random batches (after batch(es) {kill_points} of "
            f"{TOTAL_BATCHES}, +0-{KILL_JITTER_S * 1000:.0f} ms), resuming from {backup_dir}")
        say("      positions are (epoch, batches done in it), from 0; each kill lands a few ms "
            "after the child reports that position")
    else:
        say(f"[2/2] Training it in a child process with stock BackupAndRestore(save_freq=\"epoch\"), "
            f"SIGKILLed after epoch(s) {kill_points}, resuming from {backup_dir}...")
    killed_after: list[int] = []
    killed_at: list[tuple[int, int]] = []
    checkpoints: list[tuple[int, int] | None] = []
    inside_write = 0

    def after_kill(kill: harness.KillRecord) -> None:
        nonlocal inside_write
        done = kill.batches_done or 0
        saved = harness.backup_position(backup_dir)
        checkpoints.append(saved)
        if per_batch:
            killed_after.append(done)
            at = _position(done)
            killed_at.append(at)
            inside = harness.inside_write(backup_dir)
            inside_write += inside
            where = "no checkpoint yet" if saved is None else f"checkpoint at epoch {saved[0]}, batch {saved[1]}"
            say(f"[2/2] child run {kill.run}: killed at epoch {at[0]}, batch {at[1]} + {kill.delay * 1000:.0f} ms "
                f"({where}{'; inside a checkpoint write' if inside else ''})")
        else:
            epochs_done = done // BATCHES_PER_EPOCH
            killed_after.append(epochs_done)
            killed_at.append((epochs_done, 0))
            where = "no checkpoint yet" if saved is None else f"the backup resumes at epoch {saved[0]}"
            say(f"[2/2] child run {kill.run}: killed after epoch {epochs_done} ({where})")

    record = harness.run_until_done(
        _child_command(workdir, backup), plan, batches_per_epoch=BATCHES_PER_EPOCH,
        env=_child_env(), answer=None if per_batch else "", log_dir=workdir, log_name="child",
        timeout=CHILD_TIMEOUT_S, after_kill=after_kill, name="The demo's child process",
    )
    runs = record.runs
    done_epochs = record.progress.batches_done(BATCHES_PER_EPOCH) // BATCHES_PER_EPOCH if record.progress else 0
    what = f"all {TOTAL_BATCHES} batches" if per_batch else f"all {done_epochs} epochs"
    if record.finished_before_kill:
        what += " (it finished before the kill landed)"
    say(f"[2/2] child run {runs}: finished {what}")
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
    cost = None
    if per_batch:
        # What the kills cost, from the finished model's timeline.
        from resumable_scheduler import costs

        cost = costs.goodput(os.path.join(workdir, FINAL_MODEL))
        say("")
        say(costs.format_report(cost))
        if _temporary:
            say("(rerun with --workdir DIR to keep the run: resumable-scheduler inspect "
                f"DIR/{FINAL_MODEL} --plot run.png then draws it)")
        else:
            say(f"(resumable-scheduler inspect {os.path.join(workdir, FINAL_MODEL)} --plot run.png draws it)")
        say("")
    say(f"{'OK' if ok else 'FAILED'} in {seconds:.1f} s")
    return {
        "reference": reference,
        "resumed": resumed,
        "killed_after": killed_after,
        "killed_at": killed_at,
        "checkpoints": checkpoints,
        "inside_write": inside_write,
        "runs": runs,
        "record": record,
        "weights_equal": weights_equal,
        "goodput": cost,
        "ok": ok,
        "seconds": seconds,
        "workdir": workdir,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resumable_scheduler.demo")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backup", choices=BACKUPS, default="rs")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--kills", type=int, default=DEFAULT_KILLS)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.child:
        if not args.workdir:
            parser.error("--child needs --workdir")
        return _child(args.workdir, args.backup)
    result = run_demo(seed=args.seed, kills=args.kills, workdir=args.workdir, backup=args.backup)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
