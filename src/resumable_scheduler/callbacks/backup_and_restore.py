"""`rs.BackupAndRestore`: Keras's callback, made exact under any interruption."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from resumable_scheduler import _keras_internals as ki
from resumable_scheduler import rng, training_state
from resumable_scheduler.data import skip_batches
from resumable_scheduler.storage import atomic
from resumable_scheduler.storage import backup_dir as layout
from resumable_scheduler.tracker import tracker_for

#: Exit status after a preemption checkpoint (128 + SIGTERM, as a shell reports it).
PREEMPTED_EXIT_CODE = 143


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the whole training state atomically and resumes exactly.

    Same arguments and meaning as `keras.callbacks.BackupAndRestore`. Each
    checkpoint is one atomic commit (one `ckpt-NNNNNNNN-CRC32.weights.h5`
    file written as a temporary, fsynced and renamed; plain
    `model.load_weights` reads it too) holding the model and optimizer
    variables, the epoch/batch position, the host RNGs, every Keras
    `SeedGenerator`, the metric accumulators of the epoch in progress, and
    the state of every resumable callback of the same `fit` (such as
    `rs.LearningRateScheduler`). A kill at any instant leaves the previous
    checkpoint or the new one, whole.

    With an integer `save_freq`, a resumed run continues at the first batch
    not yet trained, with the same batch order, for NumPy/JAX arrays (with
    or without shuffling) and `keras.utils.PyDataset`; see
    `resumable_scheduler.data` for other inputs. Epoch-end checkpoints are
    committed once every callback has finished the epoch (at the start of the
    next one, or at the end of `fit`), so the order of the callbacks in the
    list does not matter.

    On SIGTERM (and any of `preemption_signals`) it finishes the current
    batch, commits a checkpoint, stops `fit` and exits with
    `preemption_exit_code` (default 143). Handlers are installed only during
    `fit` and the previous ones are put back afterwards.

    Concurrency: one process per `backup_dir` (a second one gets a
    `RuntimeError`; a lock left by a dead process does not block). Not
    thread-safe.

    Args:
        backup_dir: String. Directory for the checkpoints; use it for nothing else.
        save_freq: `"epoch"`, integer, or `False`. `"epoch"` saves at the end of
            each epoch; an integer saves every `save_freq` batches; `False`
            saves only on preemption.
        double_checkpoint: Boolean. Keep the previous checkpoint too, as a
            fallback if the newest cannot be read.
        delete_checkpoint: Boolean. Delete `backup_dir` when training finishes.
        preemption_signals: Iterable of signal numbers that trigger a
            checkpoint and a clean stop. Defaults to `(signal.SIGTERM,)`.
        exit_on_preemption: Boolean. After a preemption checkpoint, raise
            `SystemExit(preemption_exit_code)` at the end of `fit`. If False,
            `fit` returns and `self.preempted` holds the signal number.
        preemption_exit_code: Integer exit status after a preemption.

    Example:

    >>> import tempfile
    >>> class Interrupt(keras.callbacks.Callback):
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         if self.params and batch == 2 and not getattr(self, "done", False):
    ...             self.done = True
    ...             raise RuntimeError("Interrupting!")
    >>> d = tempfile.mkdtemp()
    >>> def run(*extra):
    ...     keras.utils.set_random_seed(1)
    ...     model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    ...     model.compile(keras.optimizers.SGD(), loss="mse")
    ...     cbs = [BackupAndRestore(d, save_freq=1), *extra]
    ...     model.fit(np.arange(100).reshape(5, 20), np.zeros((5, 10)), epochs=3,
    ...               batch_size=1, callbacks=cbs, verbose=0)
    ...     return model
    >>> try:
    ...     run(Interrupt())
    ... except RuntimeError:
    ...     pass
    >>> int(run().optimizer.iterations)  # 15 batches, none trained twice
    15
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        preemption_signals: Iterable[int] | None = None,
        exit_on_preemption: bool = True,
        preemption_exit_code: int = PREEMPTED_EXIT_CODE,
    ) -> None:
        super().__init__()
        if not backup_dir or not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(
                "Invalid value for argument `backup_dir`. "
                f"Received: backup_dir={backup_dir!r}. Expected a non-empty path."
            )
        if save_freq != "epoch" and (not isinstance(save_freq, int) or (save_freq is not False and save_freq <= 0)):
            raise ValueError(
                "Invalid value for argument `save_freq`. "
                f"Received: save_freq={save_freq!r}. "
                "Expected either 'epoch' or an integer value."
            )
        signals = tuple(preemption_signals) if preemption_signals is not None else (signal.SIGTERM,)
        for s in signals:
            if not isinstance(s, int) or s in (signal.SIGKILL, signal.SIGSTOP):
                raise ValueError(
                    "Invalid value for argument `preemption_signals`. "
                    f"Received: {s!r}. Expected catchable signal numbers such as signal.SIGTERM."
                )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.preemption_signals = signals
        self.exit_on_preemption = exit_on_preemption
        self.preemption_exit_code = preemption_exit_code
        self.preempted: int | None = None
        self._lock = atomic.DirLock(self.backup_dir)
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._epoch = 0
        self._batch = 0
        self._since_save = 0
        self._boundary_pending = False
        self._epoch_rng: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        self._resume: layout.Checkpoint | None = None
        self._skip = None
        self._old_handlers: dict[int, Any] = {}
        self._signal: int | None = None

    # -- fit lifecycle ----------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset_run_state()
        self.preempted = None
        model = self._model
        if not model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, you model must be built "
                f"before you call `fit()`. Model {model} is unbuilt. You can build "
                "it beforehand by calling it on a batch of data."
            )
        self._open_dir()
        tracker_for(model).steps = self.params.get("steps") if self.params else None
        ckpt = self._newest_usable()
        if ckpt is not None:
            self._load(ckpt)
        else:
            ki.set_initial_epoch(model, None)
        self._install_handlers()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._boundary_pending:
            self._commit(epoch, 0, rng.capture_host_rng())
        resume, self._resume = self._resume, None
        batch = 0
        if resume is not None and resume.doc["position"]["epoch"] == epoch:
            # Re-create the interrupted epoch: same RNG, so the same order.
            rng.restore_host_rng(resume.doc["rng"], resume.arrays)
            batch = resume.doc["position"]["batch"]
            if batch:
                training_state.restore_metrics(self._model, resume.arrays)
                self._skip = skip_batches(
                    batch, lambda: training_state.restore_rng_now(resume.doc, resume.arrays)
                )
        self._epoch, self._batch = epoch, batch
        self._epoch_rng = rng.capture_host_rng()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch = batch + 1
        steps = self.params.get("steps") if self.params else None
        last = steps is not None and self._batch >= steps
        if self._signal is not None:
            self.preempted = self._signal
            self._model.stop_training = True
            if last:
                self._boundary_pending = True  # committed in on_train_end
            else:
                self._commit(self._epoch, self._batch, self._epoch_rng)
            return
        if self.save_freq == "epoch" or self.save_freq is False:
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            if last:
                # Wait until every callback has finished this epoch.
                self._boundary_pending = True
            else:
                self._commit(self._epoch, self._batch, self._epoch_rng)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch" and self.preempted is None:
            self._boundary_pending = True

    def on_train_end(self, logs: dict | None = None) -> None:
        try:
            if self._skip is not None:
                self._skip.uninstall()
            if self._boundary_pending and (self.preempted is not None or not self.delete_checkpoint):
                self._commit(self._epoch + 1, 0, rng.capture_host_rng())
            self._boundary_pending = False
        finally:
            self._restore_handlers()
            self._lock.release()
        if self.preempted is not None:
            if self.exit_on_preemption:
                sys.stdout.flush()
                raise SystemExit(self.preemption_exit_code)
            return
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            import shutil

            shutil.rmtree(self.backup_dir)

    # -- storage ------------------------------------------------------------

    def _open_dir(self) -> None:
        try:
            os.makedirs(self.backup_dir, exist_ok=True)
            self._lock.acquire()
        except OSError as e:
            raise OSError(
                f"Cannot use backup_dir={self.backup_dir!r}: {e.strerror or e}. "
                "Expected a writable directory."
            ) from None
        atomic.remove_stale_temporaries(self.backup_dir)

    def _newest_usable(self) -> layout.Checkpoint | None:
        paths = layout.list_checkpoints(self.backup_dir)
        errors: list[str] = []
        for path in reversed(paths):
            try:
                ckpt = layout.read_checkpoint(path)
            except ValueError as e:
                errors.append(str(e))
                continue
            if errors:
                warnings.warn(
                    f"The newest checkpoint could not be read ({errors[0]}); resuming "
                    f"from the previous one, {path!r}.",
                    UserWarning,
                    stacklevel=3,
                )
            return ckpt
        if errors:
            self._lock.release()
            raise RuntimeError(
                f"No usable checkpoint in backup_dir={self.backup_dir!r}: "
                + "; ".join(errors)
                + ". Nothing was changed. To start training over from scratch, "
                f"delete {self.backup_dir!r} (or its ckpt-* files)."
            )
        return None

    def _load(self, ckpt: layout.Checkpoint) -> None:
        model = self._model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(ckpt.weights_path)  # also hands over callback states
        training_state.apply_after_load(model, ckpt.doc, ckpt.arrays, apply_callbacks=False)
        ki.set_initial_epoch(model, ckpt.doc["position"]["epoch"])
        self._resume = ckpt

    def _commit(self, epoch: int, batch: int, host_rng: training_state.HostRng | None) -> None:
        self._boundary_pending = False
        model = self.model  # on JAX this syncs the in-flight state
        doc, arrays = training_state.capture(model, epoch, batch, host_rng, include_callbacks=False)
        tracker = tracker_for(model)
        # Keras's saving writes the callback states through the tracker; the
        # position and RNG ride along in the same group.
        tracker.extra = (doc, arrays)
        try:
            layout.commit(self.backup_dir, model.save_weights)
        finally:
            tracker.extra = None
        layout.prune(self.backup_dir, keep=2 if self.double_checkpoint else 1)

    # -- preemption -----------------------------------------------------------

    def _install_handlers(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.preemption_signals:
            self._old_handlers[s] = signal.signal(s, self._on_signal)

    def _restore_handlers(self) -> None:
        for s, old in self._old_handlers.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old_handlers = {}

    def _in_fit(self) -> bool:
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is self._model:
                return True
            frame = frame.f_back
        return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self._in_fit():
            # fit ended by an exception and left us installed: step aside.
            old = self._old_handlers.get(signum, signal.SIG_DFL)
            self._restore_handlers()
            if callable(old):
                old(signum, frame)
            else:
                signal.signal(signum, old if old is not None else signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self._signal = signum
