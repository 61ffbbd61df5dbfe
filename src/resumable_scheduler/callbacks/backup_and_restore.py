"""`rs.BackupAndRestore`: Keras's callback, made exact under any interruption."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki
from resumable_scheduler import snapshot, training_state
from resumable_scheduler.callbacks._resume import (
    PREEMPTED_EXIT_CODE,
    ResumeMixin,
    check_save_freq,
    check_signals,
)
from resumable_scheduler.storage import background
from resumable_scheduler.storage import backup_dir as layout
from resumable_scheduler import processes
from resumable_scheduler.storage.store import store_for
from resumable_scheduler.tracker import tracker_for

__all__ = ["PREEMPTED_EXIT_CODE", "BackupAndRestore"]

#: Lock path -> the callback that took the process's lock on it last.
_LOCK_OWNERS: dict[str, "weakref.ref[BackupAndRestore]"] = {}


def _nothing(value: Any) -> None:
    """The `copy` of a saving walk whose values are not kept."""
    return None


class BackupAndRestore(ResumeMixin, keras.callbacks.Callback):
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

    Background saves (`save_on_background=True`, the default): at a save
    point the state is copied to host memory once, in the training thread
    (every value the checkpoint holds, as NumPy copies), and training goes
    on while a writer thread serializes the checkpoint and commits it. The
    file is the same as with `save_on_background=False` and holds the values
    of the save point. The next save waits only if the previous write is
    still running. Memory: at most one extra host copy of the state, kept
    during `fit` and reused from save to save, plus the serialized bytes of
    the write in flight. The end of `fit`, a preemption and the
    end of the program wait for the write; a write that fails raises its
    error in the training thread at the next save point or at the end of
    `fit`. A kill during a write leaves the previous checkpoint. An
    exception raised by a callback leaves `fit` once the write in flight is
    committed; after any other exception (from the model or the data), a
    new `BackupAndRestore` on the same `backup_dir` waits for that write
    before reading.

    Concurrency: one run per `backup_dir` (a second one gets a
    `RuntimeError`; a lock left by a dead process does not block). Not
    thread-safe.

    Several processes (JAX, `keras.distribution` initialized, every process
    running the same `fit` with this callback on the same `backup_dir`):
    the run has one backup. At each save point every process hands its own
    part (its host RNG states and the input its batch position counts) to
    process 0, which alone takes the lock (the lease, on a bucket), writes
    the one checkpoint holding the shared state and every process's part,
    and deletes it at the end; the other processes never write. On
    restart, process 0 picks the newest usable checkpoint and hands its
    name to all, so every process restores the same one, with its own
    part. `backup_dir` must therefore be storage every process reads (a
    bucket, or a shared file system). A checkpoint written by another
    number of processes is refused with a `ValueError` naming both counts.
    A failure on one process (a failed write, an unreadable checkpoint)
    raises on all of them. A signal (`preemption_signals`) to any process
    stops all of them after the same batch, with one checkpoint (this costs
    one small all-gather per batch, only when several processes run).

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
        save_on_background: Boolean. Write each checkpoint on a background
            thread (see above) instead of blocking training while it is
            written. Defaults to True.

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
        save_on_background: bool = True,
    ) -> None:
        super().__init__()
        if not backup_dir:
            raise ValueError(
                "Empty `backup_dir` argument passed. "
                f"Received: backup_dir={backup_dir!r}. Expected a non-empty path "
                "to a directory used only for this run's checkpoints."
            )
        if not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(
                "Invalid value for argument `backup_dir`. "
                f"Received: backup_dir={backup_dir!r:.100} of type "
                f"{type(backup_dir).__name__}. Expected a non-empty path (str or "
                "os.PathLike)."
            )
        check_save_freq(save_freq, allow_false=True)
        signals = check_signals(preemption_signals)
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.preemption_signals = signals
        self.exit_on_preemption = exit_on_preemption
        self.preemption_exit_code = preemption_exit_code
        self.save_on_background = bool(save_on_background)
        self.preempted: int | None = None
        self._store = store_for(self.backup_dir)
        self._writer: background.Writer | None = None
        #: The host copy of the last background save (reused by the next one
        #: once its write is done; see `background.HostCopier`).
        self._host_arrays: list | None = None
        #: The run's processes and this one's index (set in on_train_begin).
        self._processes, self._process = 1, 0
        #: Whether this fit has committed a checkpoint.
        self._wrote = False
        self._reset_position()

    # -- fit lifecycle ----------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset_position()
        self._wrote = False
        self.preempted = None
        model = ki.model_of(self)
        if not model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, you model must be built "
                f"before you call `fit()`. Model {model} is unbuilt. You can build "
                "it beforehand by calling it on a batch of data."
            )
        # A fit that raised may have left a write to this location running
        # (ours or another callback's): it is committed before we read.
        self._collect_pending(background.wait_for(self._owner_key()))
        self._processes, self._process = processes.count(), processes.index()
        if self._processes > 1:
            kind = self._agreed_start()
        else:
            self._open_dir()
            ckpt = self._newest_usable()
            kind = ckpt if ckpt is not None else "stock" if self._store.exists(layout.STOCK_WEIGHTS) else None
        if isinstance(kind, layout.Checkpoint):
            self._together(lambda: self._load(kind), "loading the checkpoint")
        elif kind == "stock":
            self._together(self._load_stock, "loading the stock backup")
        else:
            self._start_fresh()
            if self.double_checkpoint:
                # Then even the first checkpoint has one to fall back on.
                self._commit(0, 0, None)
        self._install_handlers()
        if self.save_on_background:
            # An exception of any callback (an interrupt) ends fit only once
            # the write in flight is committed, as a synchronous save would be.
            me = weakref.ref(self)

            def flush() -> None:
                cb = me()
                if cb is not None:
                    cb._join_writer()

            ki.on_callback_exception(model, flush)

    # on_epoch_begin, on_train_batch_end, on_epoch_end: ResumeMixin.

    def on_train_end(self, logs: dict | None = None) -> None:
        try:
            self._end_position()
            if self._processes == 1:
                self._raise_write_error()  # waits for the background write
            else:
                # Process 0's last write failing fails every process's fit.
                error: BaseException | None = None
                try:
                    self._raise_write_error()
                except Exception as e:  # noqa: BLE001 - raised on every process
                    error = e
                error = processes.agree(error, f"writing the last checkpoint to backup_dir={self.backup_dir!r}")
                if error is not None:
                    raise error
        finally:
            self._join_writer()
            self._host_arrays = None
            self._restore_handlers()
            self._store.close()
        if self._exit_if_preempted():
            return
        if self.delete_checkpoint and self._should_delete_at_end() and self._process == 0:
            self._store.remove_all()

    def _release(self) -> None:
        # Called when a fit that raised is dropped: the lock may have been
        # taken over since by another callback of this process (the lock is
        # re-entrant per process); only its last taker releases it.
        # A background write still running is finished first (its error, if
        # any, is warned about: the fit it belongs to has already raised).
        self._host_arrays = None
        self._join_writer()
        owner = _LOCK_OWNERS.get(self._owner_key())
        if owner is not None and owner() is self:
            if getattr(self, "_ended_by_exception", False):
                self._ended_by_exception = False
                self._note_exception()
            self._store.close()

    def _note_exception(self) -> None:
        """The fit raised: the newest checkpoint is amended to say so in its
        timeline (the next process would count the end as a kill). Best
        effort: a failure is warned about and changes nothing on disk."""
        if self._processes != 1 or not self._wrote:
            return
        model = ki.model_of(self)
        if model is None:
            return
        items = {snapshot.TIMELINE: tracker_for(model).timeline.to_json()}
        store = self._store
        # At interpreter exit (an uncaught exception; this runs from the
        # fit's finalizer) Python 3.12 starts no new thread: written here.
        at_exit = not threading.main_thread().is_alive()
        try:
            if self.save_on_background and not at_exit:  # where this callback's writes run
                error = background.submit(self._owner_key(), lambda: layout.amend(store, items)).wait()
                if error is not None:
                    raise error
            else:
                layout.amend(store, items)
        except Exception as e:  # noqa: BLE001 - the fit has raised already; this must not hide it
            warnings.warn(
                f"Could not record in backup_dir={self.backup_dir!r} that the fit raised: "
                f"{type(e).__name__}: {str(e)[:300]}. The checkpoint is intact; the next run "
                "counts this end as a kill.",
                UserWarning,
                stacklevel=2,
            )

    def _owner_key(self) -> str:
        return getattr(self._store, "directory", self._store.location)

    # -- what Keras's own tests read ------------------------------------------------

    @property
    def _weights_path(self) -> str | None:
        """The newest checkpoint file (stock: `latest.weights.h5`)."""
        background.join_for(self._owner_key())
        names = layout.checkpoint_names(self._store)
        return self._store.describe(names[-1]) if names else None

    @property
    def _prev_weights_path(self) -> str | None:
        """The checkpoint before the newest (kept with `double_checkpoint`)."""
        background.join_for(self._owner_key())
        names = layout.checkpoint_names(self._store)
        return self._store.describe(names[-2]) if len(names) > 1 else None

    @property
    def _last_batch_seen(self) -> int:
        """The index of the last batch whose end this epoch has seen (0 at
        an epoch's start), as stock counts it."""
        return max(self._batch - 1, 0)

    # Our position lives in the same file as the weights (one atomic commit).
    _training_metadata_path = _weights_path
    _prev_training_metadata_path = _prev_weights_path

    # -- storage ------------------------------------------------------------

    def _open_dir(self) -> None:
        self._store.open()
        _LOCK_OWNERS[self._owner_key()] = weakref.ref(self)

    def _newest_usable(self) -> layout.Checkpoint | None:
        ckpt, errors = layout.newest_usable(self._store)
        if ckpt is not None:
            if errors:
                warnings.warn(
                    f"The newest checkpoint could not be read ({errors[0]}); resuming "
                    f"from the previous one, {ckpt.path!r}.",
                    UserWarning,
                    stacklevel=3,
                )
            return ckpt
        if errors:
            self._store.close()
            raise ValueError(
                f"No usable checkpoint in backup_dir={self.backup_dir!r}: "
                + "; ".join(errors)
                + ". Nothing was changed. To start training over from scratch, "
                f"delete {self.backup_dir!r} (or its ckpt-* files)."
            )
        return None

    def _load(self, ckpt: layout.Checkpoint) -> None:
        try:
            # This process's host RNGs and input record; a checkpoint of
            # another number of processes is refused before anything changes.
            doc, arrays = processes.part_for(ckpt.doc, ckpt.arrays, ckpt.path, self._processes, self._process)
        except ValueError:
            self._store.close()
            raise
        model = ki.model_of(self)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(ckpt.weights())  # also hands over callback states
        self._resume_from(doc, arrays, apply_callbacks=False)

    # -- several processes -----------------------------------------------------

    def _together(self, fn: Any, what: str) -> None:
        """Runs `fn()`; with several processes, if it fails on any of
        them, it fails on all (none is left waiting in a collective)."""
        if self._processes == 1:
            fn()
            return
        error: BaseException | None = None
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - raised again below, on every process
            error = e
        error = processes.agree(error, what)
        if error is not None:
            if self._process == 0:
                self._store.close()
            raise error

    def _agreed_start(self) -> layout.Checkpoint | str | None:
        """With several processes: process 0 picks the newest usable
        checkpoint and hands its name to all, so every process restores the
        same one (even if another lands meanwhile); each reads it. Returns
        it, `"stock"` (a stock Keras backup) or None (start fresh)."""
        decision, error = "", None
        ckpt: layout.Checkpoint | None = None
        if self._process == 0:
            try:
                # The lock (the lease) is the run's: process 0 holds it for all.
                self._open_dir()
                ckpt = self._newest_usable()
            except (OSError, RuntimeError, ValueError) as e:
                error, decision = e, f"error {type(e).__name__}: {e}"
            else:
                if ckpt is not None:
                    decision = "ckpt " + ckpt.path.rstrip("/").rsplit("/", 1)[-1]
                elif self._store.exists(layout.STOCK_WEIGHTS):
                    decision = "stock"
                else:
                    decision = "fresh"
        decision = processes.broadcast_text(decision)
        kind, _, rest = decision.partition(" ")
        if kind == "error":
            if error is not None:
                raise error
            raise RuntimeError(f"Process 0 of {self._processes} cannot start with backup_dir={self.backup_dir!r}: {rest}")
        if kind == "stock":
            return "stock"
        if kind != "ckpt":
            return None
        failure: BaseException | None = None
        try:
            if ckpt is None:
                try:
                    ckpt = layout.read_named(self._store, rest)
                except ValueError as e:
                    raise ValueError(
                        f"{e} Process {self._process} of {self._processes} cannot read the checkpoint "
                        "that process 0 resumes from: every process reads it, so `backup_dir` must be "
                        "storage they all reach (a bucket, or a shared file system)."
                    ) from None
            processes.part_for(ckpt.doc, ckpt.arrays, ckpt.path, self._processes, self._process)
        except ValueError as e:
            failure = e
        failure = processes.agree(failure, f"reading {rest!r}")
        if failure is not None:
            if self._process == 0:
                self._store.close()
            raise failure
        return ckpt

    def _poll_signal(self) -> int | None:
        if self._processes == 1:
            return self._signal
        # Every process asks at the end of every batch: a signal to any
        # stops all of them at the same batch, with one shared checkpoint.
        return processes.agreed_max(self._signal or 0) or None

    def _load_stock(self) -> None:
        """Continues from a backup that stock `keras.callbacks.BackupAndRestore`
        wrote in the same directory (a user who just switched the import)."""
        model = ki.model_of(self)
        store = self._store
        try:
            epoch = json.loads(store.read("training_metadata.json").decode("utf-8"))["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"epoch={epoch!r}")
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            weights = layout.Checkpoint(store.describe(layout.STOCK_WEIGHTS), {}, {}, store.read(layout.STOCK_WEIGHTS))
            model.load_weights(weights.weights())
        except (OSError, KeyError, TypeError, ValueError) as e:
            self._store.close()
            raise ValueError(
                f"backup_dir={self.backup_dir!r} holds a stock Keras backup that "
                f"cannot be read ({e}). Nothing was changed. To start training over "
                f"from scratch, delete {self.backup_dir!r}."
            ) from None
        warnings.warn(
            f"Resuming from the stock keras.callbacks.BackupAndRestore backup in "
            f"{self.backup_dir!r} at epoch {epoch}: stock backups hold no RNG state, "
            "so the batch order from here may differ from an uninterrupted run. "
            "New checkpoints use this callback's format.",
            UserWarning,
            stacklevel=3,
        )
        self._current_epoch = epoch
        ki.set_initial_epoch(model, epoch, owner=self)

    def _commit(self, epoch: int, batch: int, host_rng: training_state.HostRng | None) -> None:
        self._boundary_pending = False
        self._wrote = True
        several = self._processes > 1
        failed: BaseException | None = None
        # One write at a time: the previous one must be committed (or its
        # error raised here, in the training thread) before the next starts.
        if not several:
            self._raise_write_error()
        else:
            try:
                self._raise_write_error()  # (only process 0 ever has one)
            except Exception as e:  # noqa: BLE001 - every process raises it, below
                failed = e
        model = self.model  # on JAX this syncs the in-flight state
        doc, arrays = training_state.capture(model, epoch, batch, host_rng, include_callbacks=False)
        doc.update(self._epoch_end_extra)
        if several:
            # Every process is at this save point: each hands its own part
            # (host RNGs, input record) to process 0, which writes the one
            # checkpoint of the run; the others never write.
            error = "" if failed is None else f"{type(failed).__name__}: {str(failed)[:500]}"
            parts = processes.decode_parts(processes.allgather_bytes(processes.encode_part(doc, arrays, error)))
            if failed is not None:
                raise failed
            for i, part in enumerate(parts):
                if part.get("error"):
                    raise RuntimeError(
                        f"Process {i} of {len(parts)} could not write a checkpoint to "
                        f"backup_dir={self.backup_dir!r}: {part['error']}. Every process stops with it."
                    )
            if self._process == 0:
                doc[processes.COUNT_KEY] = len(parts)
                doc[processes.PARTS_KEY] = [{k: v for k, v in p.items() if k != "error"} for p in parts]
        tracker = tracker_for(model)
        store, keep = self._store, 2 if self.double_checkpoint else 1
        # Keras's saving writes the callback states through the tracker; the
        # position and RNG ride along in the same group.
        tracker.extra = (doc, arrays)
        try:
            if several and self._process != 0:
                # The same walk of Keras's saving as process 0's, keeping
                # nothing: under a distribution, Keras may create (and so
                # place on every device, a collective) variables in it.
                ki.record_weights(model, _nothing)
                records = None
            elif not self.save_on_background and not several:
                layout.commit(store, model.save_weights)
            else:
                # The host copy, taken now in the training thread: everything
                # `save_weights` would write at this instant, callback states
                # included.
                copier = background.HostCopier(self._host_arrays)
                self._host_arrays = None  # in flight: not reusable until written
                records = ki.record_weights(model, copier)
        finally:
            tracker.extra = None
        if several and not self.save_on_background:
            # Process 0 writes now; every process fails together if it fails.
            write_error: BaseException | None = None
            if records is not None:
                try:
                    layout.commit(store, lambda target: ki.write_weights(records, target))
                    layout.prune(store, keep=keep)
                except Exception as e:  # noqa: BLE001 - raised on every process
                    write_error = e
                finally:
                    self._host_arrays = copier.arrays
            self._agree_written(write_error)
            return
        if several and self._process != 0:
            return  # process 0 writes the run's checkpoint
        if not self.save_on_background:
            layout.prune(store, keep=keep)
            return

        recorder = tracker.timeline

        def write() -> None:
            start = time.perf_counter()
            layout.commit(store, lambda target: ki.write_weights(records, target))
            layout.prune(store, keep=keep)
            recorder.written_in_background(time.perf_counter() - start)

        self._writer = background.submit(self._owner_key(), write)
        self._writer.arrays = copier.arrays

    def _agree_written(self, error: BaseException | None) -> None:
        """After a synchronous write of process 0: every process raises its
        error, or none does."""
        error = processes.agree(error, f"writing a checkpoint to backup_dir={self.backup_dir!r}")
        if error is not None:
            raise error

    # -- background writes ---------------------------------------------------

    def _raise_write_error(self) -> None:
        """Waits for this callback's background write; raises its error."""
        writer = self._writer
        if writer is not None:
            error = writer.wait()  # (a KeyboardInterrupt here leaves it ours)
            self._writer = None
            self._host_arrays = writer.arrays  # written: free for the next save
            if error is not None:
                raise error

    def _join_writer(self) -> None:
        """Waits for this callback's background write; warns of its error."""
        writer = self._writer
        if writer is not None:
            error = writer.wait()
            self._writer = None
            self._collect_pending(error)

    def _collect_pending(self, error: BaseException | None) -> None:
        """Reports the failed write of a fit that had already raised."""
        if error is not None:
            warnings.warn(
                f"A background save to backup_dir={self.backup_dir!r} of a fit that "
                f"raised failed: {type(error).__name__}: {str(error)[:500].rstrip('.')}. The "
                "checkpoint before it is intact and is used.",
                UserWarning,
                stacklevel=3,
            )
