"""What a `fit` leaves behind, and epoch ends that must never be lost.

Issue 8, sections 1 and 2: Keras skips `on_train_end` when `fit` raises, so
whatever our callbacks install for one `fit` (signal handlers, the resumed
epoch, the directory lock) must undo itself; an epoch-end checkpoint must
survive an exception in a later callback's `on_epoch_end`, whatever the
order of the callbacks; reruns that cannot train must say so and keep the
backup.
"""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from tests.support.resume_helpers import (
    FINAL_LR,
    X,
    Y,
    assert_same,
    documented_schedule,
    fit,
    make_model,
    outcome,
    run_uninterrupted,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Boom(keras.callbacks.Callback):
    """Raises once, in the hook and epoch given."""

    def __init__(self, hook: str, epoch: int) -> None:
        super().__init__()
        self.hook, self.at, self.fired = hook, epoch, False

    def _maybe(self, hook, epoch):
        if hook == self.hook and epoch == self.at and not self.fired:
            self.fired = True
            raise RuntimeError(f"boom in {hook} {epoch}")

    def on_train_begin(self, logs=None):
        self._maybe("on_train_begin", None)

    def on_epoch_begin(self, epoch, logs=None):
        self._maybe("on_epoch_begin", epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._maybe("on_epoch_end", epoch)


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def lock_is_free(d: str) -> bool:
    """Asks a separate open file description (as another process would)."""
    fd = os.open(os.path.join(d, ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


# -- 2. a fit that raised leaves nothing behind ---------------------------------


def test_a_raised_fit_releases_the_lock_and_a_plain_fit_starts_at_epoch_0(tmp_path):
    d = os.fspath(tmp_path / "b")
    model = make_model()
    with pytest.raises(RuntimeError, match="boom in on_epoch_end 2"):
        fit(model, [rs.BackupAndRestore(d), Boom("on_epoch_end", 2)])
    gc.collect()  # not needed on CPython once the exception is gone; harmless
    assert lock_is_free(d)
    # A resume that aborts after our on_train_begin (a later callback raises).
    with pytest.raises(RuntimeError, match="boom in on_train_begin"):
        fit(model, [rs.BackupAndRestore(d), Boom("on_train_begin", None)])
    assert lock_is_free(d)
    # A later plain fit of the same model is not moved to the resumed epoch.
    seen = Epochs()
    model.fit(X, Y, epochs=3, batch_size=5, verbose=0, callbacks=[seen])
    assert seen.seen == [0, 1, 2]
    assert model.__dict__.get("_initial_epoch") is None


def test_a_raised_fit_restores_the_sigterm_handler_in_a_real_process(tmp_path):
    # After a fit with rs.BackupAndRestore raised, a plain fit of the same
    # model must die of SIGTERM, as if our callback had never run.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        os.environ.setdefault("KERAS_BACKEND", "jax")
        sys.path.insert(0, {ROOT!r})
        import keras, numpy as np
        import resumable_scheduler as rs
        from tests.support.resume_helpers import X, Y, make_model

        class Boom(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise RuntimeError("boom")

        class Term(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 1:
                    os.kill(os.getpid(), signal.SIGTERM)

        model = make_model()
        try:
            model.fit(X, Y, epochs=3, batch_size=1, verbose=0,
                      callbacks=[rs.BackupAndRestore({os.fspath(tmp_path / 'b')!r}), Boom()])
        except RuntimeError:
            pass
        print("handler is default:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
        model.fit(X, Y, epochs=3, batch_size=1, verbose=0, callbacks=[Term()])
        print("survived SIGTERM", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "handler is default: True" in out.stdout, out.stderr[-2000:]
    assert "survived SIGTERM" not in out.stdout
    assert out.returncode == -15


def test_fit_on_a_worker_thread_warns_once_about_signals(tmp_path):
    d = os.fspath(tmp_path / "b")
    caught: list[warnings.WarningMessage] = []
    errors: list[BaseException] = []

    def work():
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fit(make_model(), [rs.BackupAndRestore(d)], epochs=2)
            caught.extend(w)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work, name="trainer")
    t.start()
    t.join()
    assert not errors
    texts = [str(w.message) for w in caught if "worker thread" in str(w.message)]
    assert len(texts) == 1
    assert "'trainer'" in texts[0] and "SIGTERM" in texts[0]


def test_two_schedulers_on_one_model_keep_their_own_state(tmp_path):
    # Stock Keras accepts two schedulers (the last one listed wins each
    # epoch); each of ours keeps its own state and every save works.
    def halve(epoch, lr):
        return lr / 2 if epoch % 2 else lr

    def runs(cbs_factory, path=None):
        model = make_model()
        cbs = cbs_factory()
        fit(model, cbs, epochs=6)
        if path:
            model.save(path)
        return model, cbs

    stock_model, _ = runs(lambda: [keras.callbacks.LearningRateScheduler(lambda e, lr: float(documented_schedule(e, lr))),
                                   keras.callbacks.LearningRateScheduler(halve)])
    path = os.fspath(tmp_path / "two.keras")
    model, (a, b) = runs(lambda: [rs.LearningRateScheduler(documented_schedule), rs.LearningRateScheduler(halve)], path)
    assert float(np.asarray(model.optimizer.learning_rate)) == float(np.asarray(stock_model.optimizer.learning_rate))
    assert (a.state_key, b.state_key) == ("LearningRateScheduler", "LearningRateScheduler#2")
    assert len(a.state.history) == len(b.state.history) == 6
    assert a.state.history != b.state.history
    saved = rs.read_state(path)["callbacks"]
    assert saved["LearningRateScheduler"]["history"] == list(a.state.history)
    assert saved["LearningRateScheduler#2"]["history"] == list(b.state.history)
    # Both come back, each to its own callback (resume path 2).
    a2, b2 = rs.LearningRateScheduler(documented_schedule), rs.LearningRateScheduler(halve)
    m2 = keras.models.load_model(path)
    assert rs.restore(path, a2, b2) == 6
    m2.fit(X, Y, epochs=6, initial_epoch=6, verbose=0, callbacks=[a2, b2])
    assert a2.state.history == a.state.history and b2.state.history == b.state.history


def test_two_schedulers_with_a_backup_resume_exactly(tmp_path):
    def halve(epoch, lr):
        return lr / 2 if epoch in (11, 13) else lr

    def cbs(d, *extra):
        return [rs.BackupAndRestore(d, save_freq=2), rs.LearningRateScheduler(documented_schedule),
                rs.LearningRateScheduler(halve), *extra]

    ref_model = make_model()
    fit(ref_model, cbs(os.fspath(tmp_path / "ref")))
    d = os.fspath(tmp_path / "b")
    from tests.support.resume_helpers import InterruptAt

    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), cbs(d, InterruptAt(12, 3)))
    model = make_model()
    fit(model, cbs(d))
    assert_same(outcome(model), outcome(ref_model))


# -- 1. epoch ends are never lost, whatever the order --------------------------


@pytest.mark.parametrize("backup_first", [True, False])
def test_an_exception_in_a_later_on_epoch_end_never_retrains_the_epoch(tmp_path, backup_first):
    d = os.fspath(tmp_path / "b")

    def cbs(*extra):
        backup = rs.BackupAndRestore(d)
        sched = rs.LearningRateScheduler(documented_schedule)
        plateau = rs.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9)
        ordered = [backup, sched, plateau] if backup_first else [sched, plateau, backup]
        return [*ordered, *extra]

    ref = make_model()
    ref_hist = fit(ref, cbs()).history["learning_rate"]
    epochs = Epochs()
    with pytest.raises(RuntimeError, match="boom in on_epoch_end 6"):
        fit(make_model(), cbs(epochs, Boom("on_epoch_end", 6)))
    assert epochs.seen == [0, 1, 2, 3, 4, 5, 6]
    assert rs.read_state(d)["epoch"] == 7
    model = make_model()
    resumed = Epochs()
    hist = fit(model, cbs(resumed)).history["learning_rate"]
    assert resumed.seen == list(range(7, 15))  # epoch 6 is never trained again
    assert hist == ref_hist[7:]  # plateau decisions replayed: same rates
    assert_same(outcome(model), outcome(ref))


def test_double_checkpoint_falls_back_from_the_first_save_on(tmp_path):
    d = os.fspath(tmp_path / "b")
    with pytest.raises(RuntimeError):
        fit(make_model(), [rs.BackupAndRestore(d, double_checkpoint=True), Boom("on_epoch_begin", 1)])
    files = sorted(f for f in os.listdir(d) if f.startswith("ckpt-"))
    assert len(files) == 2  # the start of training and the end of epoch 0
    with open(os.path.join(d, files[-1]), "r+b") as f:
        f.write(b"garbage")
    model = make_model()
    seen = Epochs()
    with pytest.warns(UserWarning, match="resuming from the previous one"):
        fit(model, [rs.BackupAndRestore(d, double_checkpoint=True), rs.LearningRateScheduler(documented_schedule), seen])
    assert seen.seen == list(range(15))
    assert int(np.asarray(model.optimizer.iterations)) == 75
    assert np.isclose(float(np.asarray(model.optimizer.learning_rate)), FINAL_LR)


# -- reruns that cannot train say so, and keep the backup -----------------------


def test_lowering_epochs_warns_and_keeps_the_unfinished_backup(tmp_path):
    d = os.fspath(tmp_path / "b")
    with pytest.raises(RuntimeError):
        fit(make_model(), [rs.BackupAndRestore(d), Boom("on_epoch_begin", 10)])
    before = sorted(os.listdir(d))
    model = make_model()
    with pytest.warns(UserWarning, match=r"resumes at epoch 10, batch 0, which is at or past `epochs`=5: this fit trains nothing \(the interrupted run was started with epochs=15\)"):
        fit(model, [rs.BackupAndRestore(d)], epochs=5)
    assert sorted(os.listdir(d)) == before
    # A rerun that trains some of the remaining epochs keeps it too.
    with pytest.warns(UserWarning, match="the checkpoint is kept: the run was started with epochs=15"):
        fit(make_model(), [rs.BackupAndRestore(d)], epochs=12)
    assert os.path.isdir(d)
    # Finishing the run deletes it, as stock does.
    model = make_model()
    fit(model, [rs.BackupAndRestore(d), rs.LearningRateScheduler(documented_schedule)])
    assert not os.path.exists(d)
    assert int(np.asarray(model.optimizer.iterations)) == 75


def test_uninterrupted_runs_still_delete_their_backup(tmp_path):
    d = os.fspath(tmp_path / "b")
    model = make_model()
    fit(model, [rs.BackupAndRestore(d, save_freq=3), rs.LearningRateScheduler(documented_schedule)])
    assert not os.path.exists(d)
    assert_same(outcome(model), run_uninterrupted())


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="rs.OrbaxCheckpoint tests run on JAX")
def test_orbax_rerun_into_a_finished_directory_warns_instead_of_silently_training_nothing(tmp_path):
    d = os.fspath(tmp_path / "ckpt")
    model = make_model()
    fit(model, [rs.LearningRateScheduler(documented_schedule), rs.OrbaxCheckpoint(d)], epochs=3)
    # The same script again: the run is finished; nothing is trained, and it says so.
    seen = Epochs()
    with pytest.warns(UserWarning, match=r"OrbaxCheckpoint: the checkpoint resumes at epoch 3, batch 0, which is at or past `epochs`=3: this fit trains nothing"):
        fit(make_model(), [rs.OrbaxCheckpoint(d), seen], epochs=3)
    assert seen.seen == []
    # Keras's own scenario: load_model(dir), then fit(epochs=1) into it. The
    # run there is past `epochs`: as stock, the loaded model trains one epoch
    # and its steps follow the newest; warned.
    from resumable_scheduler.storage import orbax_dir

    before = orbax_dir.complete_steps(d)
    loaded = keras.models.load_model(d)
    seen = Epochs()
    with pytest.warns(UserWarning, match=r"OrbaxCheckpoint: the newest step \(15\) .* is at epoch 3, batch 0, past `epochs`=1: not resuming it"):
        loaded.fit(X, Y, epochs=1, batch_size=1, verbose=0, callbacks=[rs.OrbaxCheckpoint(d), seen])
    assert seen.seen == [0]
    after = orbax_dir.complete_steps(d)
    assert before == [15] and after == [20]  # max_to_keep=1 keeps the newest


def test_a_dropped_failed_fit_never_releases_the_lock_of_a_later_fit(tmp_path):
    d = os.fspath(tmp_path / "b")
    kept = {}
    with pytest.raises(RuntimeError) as info:
        fit(make_model(), [rs.BackupAndRestore(d), Boom("on_epoch_end", 2)], epochs=6)
    kept["info"] = info  # keeps the failed fit (and its CallbackList) alive
    del info
    free_during = []

    class DropTheFailedFit(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 4:
                kept.clear()
                gc.collect()  # the failed fit's clean-up runs now
                free_during.append(lock_is_free(d))

    fit(make_model(), [rs.BackupAndRestore(d, delete_checkpoint=False), DropTheFailedFit()], epochs=6)
    assert free_during == [False]  # the running fit still holds it
    assert lock_is_free(d)
