"""What `rs.BackupAndRestore` and `rs.OrbaxCheckpoint` share: the position,
the resumed epoch, the save schedule, and preemption.

`ResumeMixin` is mixed into a Keras checkpoint callback. It reports the
epoch/batch position to the model's tracker (its one owner, shared with
every resumable callback of the model), decides when a checkpoint falls due
(every epoch or every `save_freq` batches), commits an epoch-end checkpoint in its own
`on_epoch_end` with the epoch's logs and the resumable callbacks listed
after it (a resumed run replays their `on_epoch_end`, so neither an
exception in a later callback nor the order of the list loses or changes
anything), re-creates a resumed epoch (the host RNG of its start, the metric
accumulators, the batches to skip), turns SIGTERM (or any of
`preemption_signals`) into "finish this batch, checkpoint, stop", and undoes
what a `fit` that raised left installed (Keras skips `on_train_end` then).

The host class provides the storage:

- `_commit(epoch, batch, host_rng)`: write one checkpoint of the position
  "batch `batch` of `epoch` is next", with `host_rng` the host RNG state at
  the start of that epoch;
- optionally `_want_batch_save(batch, logs)` / `_want_epoch_save(epoch, logs)`
  (e.g. `save_best_only`), and `_poll_signal()` (several processes agree on
  one value there).

In `on_train_begin` it calls `_reset_position()`, loads the variables of the
newest checkpoint, then `_resume_from(doc, arrays)` (or `_start_fresh()`) and
`_install_handlers()`; in `on_train_end`, `_end_position()`
then `_restore_handlers()` and `_exit_if_preempted()`.

Not thread-safe: every method runs on the thread that runs `fit`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from resumable_scheduler._adapters import keras as ki
from resumable_scheduler import data, rng, snapshot, training_state
from resumable_scheduler.data import epoch_steps, skip_batches
from resumable_scheduler.tracker import tracker_for

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


def _scalar_logs(logs: dict | None) -> dict[str, float]:
    """The finite real scalars of an epoch's logs, as floats (JSON-safe)."""
    out: dict[str, float] = {}
    for k, v in (logs or {}).items():
        try:
            f = float(np.asarray(v)) if np.ndim(v) == 0 else None
        except (TypeError, ValueError):
            f = None
        if f is not None and math.isfinite(f):
            out[str(k)] = f
    return out


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

    @property
    def _epoch(self) -> int:
        """The epoch being trained; the model's tracker owns the position."""
        model = ki.model_of(self)
        return tracker_for(model).training_epoch if model is not None else 0

    @property
    def _batch(self) -> int:
        """Batches of `_epoch` done (from the model's tracker)."""
        model = ki.model_of(self)
        return tracker_for(model).done if model is not None else 0

    def _reset_position(self) -> None:
        # A fit that raised skipped on_train_end: undo what it left first.
        self._abandon_fit()
        model = ki.model_of(self)
        if model is not None:  # None when called from __init__
            tracker_for(model).begin_fit(self.params)
        self._current_epoch = 0
        self._since_save = 0
        self._boundary_pending = False
        self._epoch_rng: training_state.HostRng | None = None
        self._resume: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        self._skip = None
        self._old_handlers: dict[int, Any] = {}
        self._signal: int | None = None
        self._resumed_past_end = False
        self._run_epochs: int | None = None
        #: Extra envelope items of the epoch-end commit in progress.
        self._epoch_end_extra: dict[str, Any] = {}

    def _resume_from(
        self, doc: dict[str, Any], arrays: dict[str, np.ndarray], apply_callbacks: bool = True
    ) -> None:
        """After the variables are loaded: callback states (unless loading them
        did it already), RNGs, the epoch to start."""
        training_state.apply_after_load(ki.model_of(self), doc, arrays, apply_callbacks=apply_callbacks)
        position = doc[snapshot.POSITION]
        epoch = position["epoch"]
        self._current_epoch = epoch
        run = doc.get(snapshot.RUN)
        if isinstance(run, dict) and type(run.get("epochs")) is int:
            self._run_epochs = run["epochs"]
        epochs = self.params.get("epochs") if self.params else None
        if isinstance(epochs, int) and epoch >= epochs:
            self._resumed_past_end = True
            warnings.warn(
                f"{type(self).__name__}: the checkpoint resumes at epoch {epoch}, "
                f"batch {position['batch']}, which is at or past `epochs`={epochs}: "
                "this fit trains nothing"
                + (
                    f" (the interrupted run was started with epochs={self._run_epochs})"
                    if self._run_epochs and self._run_epochs != epochs else ""
                )
                + ". Pass a larger `epochs` to train on; the checkpoint is kept.",
                UserWarning,
                stacklevel=3,
            )
        ki.set_initial_epoch(
            ki.model_of(self), epoch, owner=self, after_train_begin=lambda: self._replay_epoch_end(doc)
        )
        self._resume = (doc, arrays)

    def _start_fresh(self) -> None:
        ki.set_initial_epoch(ki.model_of(self), None)

    # -- epoch ends that callbacks after us had not processed -------------------

    def _epoch_end_doc(self, epoch: int, logs: dict | None) -> dict[str, Any]:
        """What an epoch-end commit adds to the envelope: the run's `epochs`,
        and the epoch's logs with the resumable callbacks listed after this
        one (they have not seen this epoch end yet; a resumed run replays
        their `on_epoch_end` with these logs, so the order of callbacks does
        not matter and a finished epoch is never trained again)."""
        out: dict[str, Any] = {}
        epochs = self.params.get("epochs") if self.params else None
        if isinstance(epochs, int):
            out[snapshot.RUN] = {"epochs": epochs}
        record = data.boundary_record(ki.model_of(self))
        if record is not None:  # the next epoch continues this pass, or its reader has state
            out[snapshot.INPUT] = record
        cbs = ki.running_fit_callbacks(ki.model_of(self)) or []
        mine = next((i for i, c in enumerate(cbs) if c is self), None)
        if mine is None:
            return out
        tracker = tracker_for(ki.model_of(self))
        keys = {id(obj): key for key, obj in tracker.resumables().items()}
        later = [keys[id(c)] for c in cbs[mine + 1:] if id(c) in keys and c is not self]
        if later:
            out[snapshot.REPLAY] = {"epoch": int(epoch), "logs": _scalar_logs(logs), "callbacks": later}
        return out

    def _replay_epoch_end(self, doc: dict[str, Any]) -> None:
        """Runs `on_epoch_end` of the callbacks that had not seen the epoch
        end the checkpoint was written at (see `_epoch_end_doc`)."""
        replay = doc.get(snapshot.REPLAY)
        if not isinstance(replay, dict) or doc[snapshot.POSITION]["batch"] != 0:
            return
        epoch = replay.get("epoch")
        if type(epoch) is not int or epoch + 1 != doc[snapshot.POSITION]["epoch"]:
            return
        logs = replay.get("logs") if isinstance(replay.get("logs"), dict) else {}
        resumables = tracker_for(ki.model_of(self)).resumables()
        live = {id(c) for c in ki.running_fit_callbacks(ki.model_of(self)) or []}
        for key in replay.get("callbacks") or []:
            cb = resumables.get(key) if isinstance(key, str) else None
            if cb is not None and id(cb) in live:
                cb.on_epoch_end(epoch, dict(logs))

    # -- a fit that raised ---------------------------------------------------------

    def _watch_fit(self) -> None:
        """Undoes what this fit installs if it raises (Keras then skips
        `on_train_end`): once the exception is dropped, the fit's
        `CallbackList` is freed and `_abandon_fit` runs."""
        cl = ki.running_fit_callback_list(ki.model_of(self))
        self._fit_watch = None
        if cl is not None:
            me = weakref.ref(self)

            def abandon() -> None:
                cb = me()
                if cb is not None:
                    cb._abandon_fit()

            self._fit_watch = weakref.finalize(cl, abandon)

    def _abandon_fit(self) -> None:
        """Removes the signal handlers, the batch skip, the resumed epoch and
        the host's resources (`_release`) left by a fit that did not end."""
        watch = getattr(self, "_fit_watch", None)
        model = ki.model_of(self)
        if watch is not None:
            watch.detach()
            self._fit_watch = None
            if model is not None:  # the fit raised: its segment ends so
                tracker_for(model).end_fit("exception")
                self._ended_by_exception = True
        if getattr(self, "_old_handlers", None):
            if threading.current_thread() is threading.main_thread():
                self._restore_handlers()
        skip = getattr(self, "_skip", None)
        if skip is not None:
            skip.uninstall()
            self._skip = None
        if model is not None:
            ki.clear_initial_epoch_of(model, self)
        self._release()

    def _release(self) -> None:
        """Host hook: free what `on_train_begin` took (a lock, say)."""

    # -- Keras hooks -----------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        resume, self._resume = self._resume, None
        batch = 0
        if resume is not None and resume[0][snapshot.POSITION]["epoch"] == epoch:
            doc, arrays = resume
            # A position counted on another input (batch size, data length,
            # steps per epoch) is refused before anything is trained.
            data.check_resumed_input(self, doc)
            # Re-create the interrupted epoch: same RNG, so the same order.
            rng.restore_host_rng(doc[snapshot.RNG], arrays)
            batch = doc[snapshot.POSITION]["batch"]
            record = doc.get(snapshot.INPUT)
            reader = record.get("reader") if isinstance(record, dict) else None
            if batch or data.carried_pass(record) is not None or reader is not None:
                if batch:
                    training_state.restore_metrics(ki.model_of(self), arrays)
                self._skip = skip_batches(
                    batch,
                    model=ki.model_of(self),
                    owner=self,
                    after_skip=(lambda: training_state.restore_rng_now(doc, arrays)) if batch else None,
                    reader_state=reader,
                    record=record,
                    epoch=epoch,
                )
        data.begin_epoch(self, epoch)
        self._epoch_steps = data.steps_in_epoch(self)
        tracker_for(ki.model_of(self)).set_position(epoch, batch)
        self._epoch_rng = rng.capture_host_rng()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Runs per batch: the common case (no signal, no save due) does the
        # least it can.
        model = ki.model_of(self)
        tracker = tracker_for(model)
        tracker.note_batch_end(batch)
        signum = self._poll_signal()
        if signum is not None:
            self.preempted = signum
            tracker.end_fit("signal")
            model.stop_training = True
            self._save_now_or_at_boundary(self._is_last(tracker))
            return
        if self.save_freq == "epoch" or self.save_freq is False:
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            if self._want_batch_save(batch, logs):
                self._save_now_or_at_boundary(self._is_last(tracker))

    def _is_last(self, tracker: Any) -> bool:
        """Whether the batch just trained is the last of its epoch."""
        steps = epoch_steps(self)
        return steps is not None and tracker.done >= steps

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        finished = self._batch_count_done(epoch)
        tracker_for(ki.model_of(self)).note_epoch_end(epoch)
        if finished:
            self._current_epoch = epoch + 1
        # An input of unknown epoch length (a grain IterDataset, say), or an
        # epoch cut short where such an input ran out: the last batch's
        # checkpoint could not know it was the last, so the epoch's end is
        # committed as the boundary it is.
        unknown_end = (
            type(self.save_freq) is int
            and self.preempted is None
            and (epoch_steps(self) is None or data.input_ran_out(self))
        )
        due = self._boundary_pending or unknown_end or (
            self.save_freq == "epoch" and self.preempted is None and self._want_epoch_save(epoch, logs)
        )
        self._boundary_pending = False
        if due and finished:
            # Committed now, so that an exception in a later callback's
            # on_epoch_end cannot lose it; those callbacks' epoch ends are
            # replayed on resume (`_epoch_end_doc`).
            self._epoch_end_extra = self._epoch_end_doc(epoch, logs)
            tracker = tracker_for(ki.model_of(self))
            tracker.epoch_end_replayed = frozenset(self._epoch_end_extra.get(snapshot.REPLAY, {}).get("callbacks", ()))
            try:
                self._timed_commit(epoch + 1, 0, rng.capture_host_rng())
            finally:
                self._epoch_end_extra = {}
                tracker.epoch_end_replayed = frozenset()

    def _batch_count_done(self, epoch: int) -> bool:
        """False when `fit` left this epoch before its last batch (a mid-epoch
        preemption: its checkpoint is already written)."""
        steps = epoch_steps(self)
        return not (self.preempted is not None and (steps is None or self._batch < steps))

    def _save_now_or_at_boundary(self, last: bool) -> None:
        if last:
            # Wait until every callback has finished this epoch.
            self._boundary_pending = True
        else:
            self._timed_commit(self._epoch, self._batch, self._epoch_rng)

    def _timed_commit(self, epoch: int, batch: int, host_rng: training_state.HostRng | None) -> None:
        """`_commit`, with the time it blocked training kept in the timeline."""
        start = time.perf_counter()
        try:
            self._commit(epoch, batch, host_rng)
        finally:
            tracker_for(ki.model_of(self)).timeline.saved(time.perf_counter() - start)

    def _end_position(self) -> None:
        """In `on_train_end`: drop the batch skip and the failed-fit watch
        (epoch ends are committed in `on_epoch_end`)."""
        if self._skip is not None:
            self._skip.uninstall()
        watch = getattr(self, "_fit_watch", None)
        if watch is not None:
            watch.detach()
            self._fit_watch = None
        self._boundary_pending = False
        tracker_for(ki.model_of(self)).end_fit("signal" if self.preempted is not None else "finished")

    def _should_delete_at_end(self) -> bool:
        """Whether `delete_checkpoint` may delete now: never after a
        preemption, a fit resumed at or past `epochs`, or when the run was
        started with more epochs than this fit had (warned)."""
        if self.preempted is not None or self._resumed_past_end:
            return False
        epochs = self.params.get("epochs") if self.params else None
        if self._run_epochs is not None and isinstance(epochs, int) and self._run_epochs > epochs:
            warnings.warn(
                f"{type(self).__name__}: the checkpoint is kept: the run was started "
                f"with epochs={self._run_epochs} and this fit ended at epoch "
                f"{self._current_epoch} (epochs={epochs}). Rerun with "
                f"epochs={self._run_epochs} to finish it, or delete the checkpoint.",
                UserWarning,
                stacklevel=3,
            )
            return False
        return True

    # -- preemption ------------------------------------------------------------

    def _install_handlers(self) -> None:
        self._watch_fit()
        if not self.preemption_signals:
            return
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                f"{type(self).__name__}: `fit` runs on a worker thread "
                f"({threading.current_thread().name!r}), where Python cannot install "
                "signal handlers: SIGTERM (`preemption_signals`) will not trigger a "
                "checkpoint and a clean stop. Scheduled checkpoints (`save_freq`) "
                "work as usual. Call `fit` from the main thread for preemption "
                "handling.",
                UserWarning,
                stacklevel=3,
            )
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
        if not ki.in_fit_with(ki.model_of(self), self):
            # The fit we were installed for ended by an exception and left us
            # installed (a later fit does not run us): step aside.
            old = self._old_handlers.get(signum, signal.SIG_DFL)
            self._restore_handlers()
            if callable(old):
                old(signum, frame)
            else:
                signal.signal(signum, old if old is not None else signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self._signal = signum
