"""What `rs.BackupAndRestore` and `rs.OrbaxCheckpoint` share: the position,
the resumed epoch, the save schedule, and preemption.

`ResumeMixin` is mixed into a Keras checkpoint callback. It keeps the
epoch/batch position, decides when a checkpoint falls due (every epoch or
every `save_freq` batches), defers an epoch-end checkpoint until every
callback has finished the epoch (it is committed at the start of the next
epoch, or at the end of `fit`), re-creates a resumed epoch (the host RNG of
its start, the metric accumulators, the batches to skip), and turns SIGTERM
(or any of `preemption_signals`) into "finish this batch, checkpoint, stop".

The host class provides the storage:

- `_commit(epoch, batch, host_rng)`: write one checkpoint of the position
  "batch `batch` of `epoch` is next", with `host_rng` the host RNG state at
  the start of that epoch;
- optionally `_want_batch_save(batch, logs)` / `_want_epoch_save(epoch, logs)`
  (e.g. `save_best_only`), and `_poll_signal()` (several processes agree on
  one value there).

In `on_train_begin` it calls `_reset_position()`, loads the variables of the
newest checkpoint, then `_resume_from(doc, arrays)` (or `_start_fresh()`) and
`_install_handlers()`; in `on_train_end`, `_end_position(commit_boundary)`
then `_restore_handlers()` and `_exit_if_preempted()`.

Not thread-safe: every method runs on the thread that runs `fit`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from resumable_scheduler import _keras_internals as ki
from resumable_scheduler import rng, training_state
from resumable_scheduler.data import skip_batches

#: Exit status after a preemption checkpoint (128 + SIGTERM, as a shell reports it).
PREEMPTED_EXIT_CODE = 143


def check_save_freq(save_freq: Any, allow_false: bool = False) -> None:
    """Raises the Keras-worded ValueError for a bad `save_freq`.

    >>> check_save_freq(3.5)
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for argument `save_freq`. Received: save_freq=3.5. Expected either 'epoch' or an integer value.
    """
    if save_freq == "epoch" or (allow_false and save_freq is False):
        return
    if not isinstance(save_freq, int) or save_freq <= 0:
        raise ValueError(
            "Invalid value for argument `save_freq`. "
            f"Received: save_freq={save_freq!r}. "
            "Expected either 'epoch' or an integer value."
        )


def check_signals(preemption_signals: Iterable[int] | None) -> tuple[int, ...]:
    """`preemption_signals` as a tuple (default: SIGTERM), validated."""
    signals = tuple(preemption_signals) if preemption_signals is not None else (signal.SIGTERM,)
    for s in signals:
        if not isinstance(s, int) or s in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                "Invalid value for argument `preemption_signals`. "
                f"Received: {s!r}. Expected catchable signal numbers such as signal.SIGTERM."
            )
    return signals


class ResumeMixin:
    """Position, resume, save schedule and preemption for a checkpoint callback."""

    _model: Any
    params: dict
    save_freq: str | int | bool
    preemption_signals: tuple[int, ...]
    exit_on_preemption: bool
    preemption_exit_code: int
    preempted: int | None

    # -- hooks for the host class ----------------------------------------------

    def _commit(self, epoch: int, batch: int, host_rng: training_state.HostRng | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _want_batch_save(self, batch: int, logs: dict | None) -> bool:
        return True

    def _want_epoch_save(self, epoch: int, logs: dict | None) -> bool:
        return True

    def _poll_signal(self) -> int | None:
        """The preemption signal to act on at this batch end (None: carry on)."""
        return self._signal

    # -- state -----------------------------------------------------------------

    def _reset_position(self) -> None:
        self._epoch = 0
        self._batch = 0
        self._since_save = 0
        self._boundary_pending = False
        self._epoch_rng: training_state.HostRng | None = None
        self._resume: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        self._skip = None
        self._old_handlers: dict[int, Any] = {}
        self._signal: int | None = None

    def _resume_from(
        self, doc: dict[str, Any], arrays: dict[str, np.ndarray], apply_callbacks: bool = True
    ) -> None:
        """After the variables are loaded: callback states (unless loading them
        did it already), RNGs, the epoch to start."""
        training_state.apply_after_load(self._model, doc, arrays, apply_callbacks=apply_callbacks)
        ki.set_initial_epoch(self._model, doc["position"]["epoch"])
        self._resume = (doc, arrays)

    def _start_fresh(self) -> None:
        ki.set_initial_epoch(self._model, None)

    # -- Keras hooks -----------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._boundary_pending:
            self._commit(epoch, 0, rng.capture_host_rng())
            self._boundary_pending = False
        from resumable_scheduler import data

        resume, self._resume = self._resume, None
        batch = 0
        if resume is not None and resume[0]["position"]["epoch"] == epoch:
            doc, arrays = resume
            # A position counted on another input (batch size, data length,
            # steps per epoch) is refused before anything is trained.
            data.check_resumed_input(self, doc)
            # Re-create the interrupted epoch: same RNG, so the same order.
            rng.restore_host_rng(doc["rng"], arrays)
            batch = doc["position"]["batch"]
            if batch:
                training_state.restore_metrics(self._model, arrays)
                self._skip = skip_batches(
                    batch,
                    model=self._model,
                    owner=self,
                    after_skip=lambda: training_state.restore_rng_now(doc, arrays)
                )
        data.warn_partial_epochs(self)
        self._epoch, self._batch = epoch, batch
        self._epoch_rng = rng.capture_host_rng()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch = batch + 1
        steps = self.params.get("steps") if self.params else None
        last = steps is not None and self._batch >= steps
        signum = self._poll_signal()
        if signum is not None:
            self.preempted = signum
            self._model.stop_training = True
            self._save_now_or_at_boundary(last)
            return
        if self.save_freq == "epoch" or self.save_freq is False:
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            if self._want_batch_save(batch, logs):
                self._save_now_or_at_boundary(last)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch" and self.preempted is None and self._want_epoch_save(epoch, logs):
            self._boundary_pending = True

    def _save_now_or_at_boundary(self, last: bool) -> None:
        if last:
            # Wait until every callback has finished this epoch.
            self._boundary_pending = True
        else:
            self._commit(self._epoch, self._batch, self._epoch_rng)

    def _end_position(self, commit_boundary: bool) -> None:
        """In `on_train_end`: drop the batch skip, commit a pending epoch end."""
        if self._skip is not None:
            self._skip.uninstall()
        if self._boundary_pending and commit_boundary:
            self._commit(self._epoch + 1, 0, rng.capture_host_rng())
        self._boundary_pending = False

    # -- preemption ------------------------------------------------------------

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.preemption_signals:
            self._old_handlers[s] = signal.signal(s, self._on_signal)

    def _restore_handlers(self) -> None:
        for s, old in self._old_handlers.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old_handlers = {}

    def _exit_if_preempted(self) -> bool:
        """After a preemption checkpoint: raise SystemExit or return True."""
        if self.preempted is None:
            return False
        if self.exit_on_preemption:
            sys.stdout.flush()
            raise SystemExit(self.preemption_exit_code)
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not ki.in_fit_of(self._model):
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
