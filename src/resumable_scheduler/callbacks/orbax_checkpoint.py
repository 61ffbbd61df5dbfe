"""`rs.OrbaxCheckpoint`: Keras's Orbax callback, made to resume by itself, exactly."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from resumable_scheduler._adapters import keras as ki
from resumable_scheduler import processes, snapshot, training_state
from resumable_scheduler.callbacks._resume import (
    PREEMPTED_EXIT_CODE,
    ResumeMixin,
    check_save_freq,
    check_signals,
)
from resumable_scheduler.monitor_state import check_best, encode_best
from resumable_scheduler.protocol import encode_envelope
from resumable_scheduler.storage import orbax_dir as layout
from resumable_scheduler.storage import orbax_store
from resumable_scheduler.tracker import tracker_for

GROUPS = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")
_HOST_RNG_PREFIXES = ("rng_", training_state.NOW)


#: URL schemes Orbax's own path layer writes to (Google Cloud Storage, through
#: tensorstore); any other URL is refused with a clear error.
ORBAX_URL_SCHEMES = ("gs",)


class OrbaxCheckpoint(ResumeMixin, keras.callbacks.OrbaxCheckpoint):
    """Saves with Orbax like `keras.callbacks.OrbaxCheckpoint`, and resumes exactly.

    Same arguments and meaning as `keras.callbacks.OrbaxCheckpoint`. In
    addition, every step also holds, beside the model state tree, the
    epoch/batch position, the host RNGs, every Keras `SeedGenerator`, the
    metric accumulators of an epoch in progress and the state of every
    resumable callback of the same `fit` (such as `rs.LearningRateScheduler`),
    as Orbax checkpointables: `resumable_state` (JSON) and `resumable_arrays`.

    At the start of `fit` it loads the newest complete step (weights,
    optimizer, callback states, position) and continues from there, for
    `save_freq="epoch"` and for an integer `save_freq` (mid-epoch: at the
    first batch not yet trained, in the same batch order). Rerunning the same
    script after an interruption therefore just continues.

    Steps are named by the global batch index (batches trained since the
    start of training) at the save, so a rerun never reuses a finished step.
    An epoch-end step is committed once every callback has finished the epoch.
    A relative `directory` is made absolute when the callback is created.
    With `save_on_background=True` (default) Orbax writes in the background:
    on one JAX process a save blocks training only for a copy of the state
    (on its devices), and the whole Orbax save runs on a writer thread
    (`storage.orbax_store`); the end of `fit` waits for the writes
    (`wait_until_finished`). Memory: at most one extra copy of the state in
    flight, on the devices when they have room for two more copies, else in
    host memory; the next save waits for the previous write if it is still
    running. The model config and assets that
    `keras.models.load_model` reads are serialized once per `fit`.
    `keras.models.load_model(directory)` reads the newest step, as it reads a
    stock one. With `save_weights_only=True` no model config is written (as
    stock), but the optimizer variables still are: resuming needs them.

    Several JAX processes (`keras.distribution`): Orbax coordinates the
    writes (every process must run the same `fit`); each process's host RNG
    is saved and restored separately. On SIGTERM (or any of
    `preemption_signals`) to any process, all processes agree, at the end of
    the same batch, to save that step and stop (agreeing costs one small
    all-gather per batch, only when several processes run); `fit` then raises
    `SystemExit(preemption_exit_code)` (or returns, with `self.preempted` set,
    if `exit_on_preemption=False`).

    Not thread-safe; call `fit` from the main thread to have preemption
    handling.

    Args:
        directory: String or path. Where the step folders go (use it for
            nothing else).
        monitor: String. The metric for `save_best_only`.
        verbose: Integer, 0 or 1. 1 prints a line for every step saved.
        save_best_only: Boolean. Save only when `monitor` improves.
        mode: One of `"auto"`, `"min"`, `"max"`, for `save_best_only`.
        save_freq: `"epoch"` or an integer number of batches.
        initial_value_threshold: Float. Initial "best" value of `monitor`.
        max_to_keep: Integer or None. Number of newest steps kept (None: all).
        save_on_background: Boolean. Write asynchronously.
        save_weights_only: Boolean. Skip the model config and assets.
        preemption_signals: Iterable of signal numbers that trigger a
            checkpoint and a clean stop. Defaults to `(signal.SIGTERM,)`.
        exit_on_preemption: Boolean. After a preemption checkpoint, raise
            `SystemExit(preemption_exit_code)` at the end of `fit`.
        preemption_exit_code: Integer exit status after a preemption.

    Raises:
        ImportError: `orbax-checkpoint` is not installed.
        ValueError: an invalid argument (named in the message).

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
    ...     cbs = [rs.OrbaxCheckpoint(d, save_freq=1), *extra]
    ...     model.fit(np.arange(100).reshape(5, 20) / 100, np.zeros((5, 10)),
    ...               epochs=3, batch_size=1, callbacks=cbs, verbose=0)
    ...     return model
    >>> try:
    ...     run(Interrupt())
    ... except RuntimeError:
    ...     pass
    >>> int(run().optimizer.iterations)  # 15 batches, none trained twice
    15
    >>> rs.read_state(d)["epoch"]
    3
    """

    state_key = "OrbaxCheckpoint"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        max_to_keep: int | None = 1,
        save_on_background: bool = True,
        save_weights_only: bool = False,
        preemption_signals: Iterable[int] | None = None,
        exit_on_preemption: bool = True,
        preemption_exit_code: int = PREEMPTED_EXIT_CODE,
    ) -> None:
        layout.import_orbax()
        # MonitorCallback's set-up only: the stock __init__ would open a
        # checkpointer on a (possibly relative) path right away.
        super(keras.callbacks.OrbaxCheckpoint, self).__init__(monitor, mode, initial_value_threshold)
        if not directory or not isinstance(directory, (str, os.PathLike)):
            raise ValueError(
                "Invalid value for argument `directory`. "
                f"Received: directory={directory!r}. Expected a non-empty path."
            )
        try:
            check_save_freq(save_freq)
        except ValueError:
            # Keras's own sentence (keras.callbacks.OrbaxCheckpoint), then ours.
            raise ValueError(
                f"Unrecognized save_freq: {str(save_freq)[:100]}. Expected save_freq are 'epoch' "
                f"or integer values. Received: save_freq={save_freq!r:.100}. Expected either "
                "'epoch' or an integer value >= 1 (the number of batches between saves)."
            ) from None
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(
                "Invalid value for argument `max_to_keep`. "
                f"Received: max_to_keep={max_to_keep!r}. Expected None or an integer >= 1."
            )
        directory = os.fspath(directory)
        scheme = directory.split("://", 1)[0] if "://" in directory else ""
        if scheme and scheme not in ORBAX_URL_SCHEMES:
            raise ValueError(
                "Invalid value for argument `directory`. "
                f"Received: directory={directory!r:.200}. Orbax writes a checkpoint as a "
                f"folder it renames into place (`<step>{layout.TMP_SUFFIX}`), through "
                f"its own path layer, which supports {', '.join(s + '://' for s in ORBAX_URL_SCHEMES)} "
                f"and local paths; {scheme}:// object storage has no folders or renames, so "
                "Orbax cannot write there. Use rs.BackupAndRestore(backup_dir="
                f"{directory!r:.200}), which writes each checkpoint as one object."
            )
        self.directory = directory if scheme else os.path.abspath(directory)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.save_on_background = save_on_background
        self.save_weights_only = save_weights_only
        self.preemption_signals = check_signals(preemption_signals)
        self.exit_on_preemption = exit_on_preemption
        self.preemption_exit_code = preemption_exit_code
        self.preempted: int | None = None
        self.store = orbax_store.OrbaxStore(self.directory, max_to_keep)
        self._last_step = -1
        #: The model config JSON and assets of this fit (they do not change
        #: while it trains), serialized at its first save.
        self._model_items: tuple[str, Any] | None = None
        self._reset_position()

    # -- resumable protocol (the `best` of save_best_only) ---------------------

    def get_state(self) -> dict[str, Any]:
        return {"version": 1, "best": encode_best(self.best)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError(
                f"Invalid OrbaxCheckpoint state. Received: {state!r:.200}. "
                "Expected a dict with version=1."
            )
        self.best = check_best(state.get("best"), "OrbaxCheckpoint")

    def set_model(self, model: Any) -> None:
        keras.callbacks.Callback.set_model(self, model)
        if self.save_best_only:
            tracker_for(model).register(self)

    # -- multi-host ------------------------------------------------------------

    def is_multihost_enabled(self) -> bool:
        """True when several JAX processes train together."""
        return processes.count() > 1

    def is_primary_host(self) -> bool:
        """True on the process that writes shared files (process 0)."""
        return processes.index() == 0

    def _poll_signal(self) -> int | None:
        if processes.count() == 1:
            return self._signal
        # Every process asks at the end of every batch: any signal anywhere
        # stops all of them at the same batch, with one shared checkpoint.
        agreed = processes.agreed_max(self._signal or 0)
        return agreed or None

    # -- fit lifecycle ----------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset_position()
        self.preempted = None
        model = ki.model_of(self)
        if not model.built:
            raise ValueError(
                "To use the OrbaxCheckpoint callback, your model must be built "
                f"before you call `fit()`. Model {model} is unbuilt. You can build "
                "it beforehand by calling it on a batch of data."
            )
        if self.monitor_op is None and self.save_best_only:
            ki.set_monitor_op(self)
        self._open()
        found = self._newest_resumable()
        epochs = self.params.get("epochs") if self.params else None
        if found is not None and isinstance(epochs, int) and found[1][snapshot.POSITION]["epoch"] > epochs:
            self._train_past_a_longer_run(*found, epochs)
        elif found is not None:
            self._load(*found)
        else:
            self._start_fresh()
        self._install_handlers()

    def _train_past_a_longer_run(self, step: int, doc: dict[str, Any], epochs: int) -> None:
        """The directory's run already trained more epochs than this `fit` asks
        for (`keras.models.load_model(directory)`, then `fit(epochs=1)` into
        it): not a rerun of the same script. As stock, train the model as
        given, with new steps after the newest; warn, never silently."""
        position = doc[snapshot.POSITION]
        warnings.warn(
            f"OrbaxCheckpoint: the newest step ({step}) in directory={self.directory!r} "
            f"is at epoch {position['epoch']}, batch {position['batch']}, past "
            f"`epochs`={epochs}: not resuming it. As keras.callbacks.OrbaxCheckpoint "
            f"does, this fit trains the model as given and numbers its steps after "
            f"{step}. To continue that run instead, pass "
            f"epochs > {position['epoch']}.",
            UserWarning,
            stacklevel=3,
        )
        self._last_step = max(self._last_step, step)
        self._start_fresh()

    def on_train_end(self, logs: dict | None = None) -> None:
        try:
            self._end_position()
            self.wait_until_finished()
        finally:
            self._restore_handlers()
            self._close()
        self._exit_if_preempted()

    def wait_until_finished(self) -> None:
        """Blocks until every background write has finished (on every process)."""
        self.store.wait()

    @property
    def checkpointer(self) -> Any:
        """The Orbax `Checkpointer` of `directory` while open (as stock), else None."""
        return self.store.checkpointer

    # -- save decisions (save_best_only) -----------------------------------------

    def _want_batch_save(self, batch: int, logs: dict | None) -> bool:
        return self._improved(logs, f"batch {batch}")

    def _want_epoch_save(self, epoch: int, logs: dict | None) -> bool:
        return self._improved(logs, f"epoch {epoch}")

    def _improved(self, logs: dict | None, where: str) -> bool:
        if not self.save_best_only:
            return True
        if self.monitor_op is None:
            ki.set_monitor_op(self)
        current = logs.get(self.monitor) if logs else None
        if current is None:
            warnings.warn(
                f"Can save best model only with {self.monitor} available, skipping save at {where}.",
                stacklevel=3,
            )
            return False
        if not ki.is_improvement(self, current, self.best):
            return False
        self.best = float(current)
        return True

    # -- storage ------------------------------------------------------------

    def _open(self) -> None:
        self.store.open()
        self._last_step = max(self.store.steps(), default=-1)
        self._model_items = None

    def _close(self) -> None:
        self.store.close()

    def _newest_resumable(self) -> tuple[int, dict[str, Any]] | None:
        return self.store.newest_usable()

    def _load(self, step: int, doc: dict[str, Any]) -> None:
        model = ki.model_of(self)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        pairs = _match_variables(model, doc, step)
        abstract: dict[str, Any] = {g: {} for g in GROUPS if g in doc[snapshot.VARIABLES]}
        for group, path, var in pairs:
            _put(abstract[group], path, _abstract_leaf(var))
        tree, saved = self.store.load(step, abstract)
        for group, path, var in pairs:
            var.assign(_get(tree[group], path))
        arrays = {k: np.asarray(v) for k, v in (saved.get("training") or {}).items()}
        cb_arrays = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in (saved.get("callbacks") or {}).items()}
        doc, arrays = _this_process_rng(doc, arrays)
        tracker_for(model).apply(doc[snapshot.CALLBACKS], cb_arrays)
        self._resume_from(doc, arrays, apply_callbacks=False)
        self._last_step = max(self._last_step, step)

    def _release(self) -> None:
        """A fit that raised (no `on_train_end`): finish its writes, close."""
        if orbax_store.exiting():
            return  # the program's exit closed it already
        try:
            self._close()
        except Exception as e:  # noqa: BLE001 - that fit already failed
            warnings.warn(f"An earlier write to {self.directory!r} failed: {e}", UserWarning, stacklevel=3)

    def _save_checkpoint(self, step: int, logs: dict | None = None) -> None:
        """Saves a step now, numbered `step`, as stock `OrbaxCheckpoint` does
        (Keras's own tests call it after `set_model`, outside `fit`).

        The step records the position this callback is at (epoch 0, batch 0
        before any fit). Outside `fit` the checkpointer is opened here; close
        it with `self.checkpointer.close()` (or `wait_until_finished()`).
        """
        if self.checkpointer is None:
            self._open()
        # Orbax's own background save (no writer thread of the store), so
        # that closing `self.checkpointer` right after finishes the write.
        self._commit(self._epoch, self._batch, None, step=int(step), writer_thread=False)

    def _commit(
        self,
        epoch: int,
        batch: int,
        host_rng: training_state.HostRng | None,
        step: int | None = None,
        writer_thread: bool = True,
    ) -> None:
        self._boundary_pending = False
        model = self.model  # on JAX this syncs the in-flight state
        doc, arrays = training_state.capture(model, epoch, batch, host_rng)
        doc.update(getattr(self, "_epoch_end_extra", None) or {})
        doc.update(self._epoch_end_extra)
        doc[snapshot.VARIABLES] = {g: [v.path for v in _group(model, g)] for g in GROUPS}
        if processes.count() > 1:
            doc[snapshot.RNG_BY_PROCESS] = _gather_host_rng(doc, arrays)
        envelope = json.loads(encode_envelope(doc[snapshot.CALLBACKS], {k: v for k, v in doc.items() if k != snapshot.CALLBACKS}))
        tree = _state_tree(model)
        if self.save_weights_only:
            tree = {k: tree[k] for k in ("trainable_variables", "non_trainable_variables", "optimizer_variables")}
        config = assets = None
        if not self.save_weights_only:
            # What stock writes, so that keras.models.load_model reads it;
            # serialized once per fit.
            if self._model_items is None or not writer_thread:
                self._model_items = (ki.model_config_json(model), ki.model_assets(model))
            config, assets = self._model_items
        if step is None:
            step = max(doc[snapshot.POSITION]["step"], self._last_step + 1)
        self._last_step = max(self._last_step, step)
        self.store.save(
            step,
            tree,
            envelope,
            {"training": arrays, "callbacks": tracker_for(model).collect_arrays()},
            model_config=config,
            assets=assets,
            background=self.save_on_background,
            writer_thread=writer_thread,
        )
        if self.verbose > 0 and self.is_primary_host():
            ki.print_msg(
                f"\nEpoch {epoch + 1 if batch else epoch}: saving Orbax step {step} "
                f"(epoch {epoch}, batch {batch}) to {self.directory}"
            )


# -- helpers -------------------------------------------------------------------


def _group(model: Any, group: str) -> list[Any]:
    if group == "optimizer_variables":
        return list(model.optimizer.variables) if model.optimizer is not None else []
    return list(getattr(model, group))


def _state_tree(model: Any) -> dict[str, Any]:
    """The model state tree as stock Keras saves it (native arrays on JAX)."""
    if keras.backend.backend() == "jax":
        return model.get_state_tree()
    tree = model.get_state_tree(value_format="numpy_array")
    return keras.tree.map_structure(lambda x: x.item() if np.ndim(x) == 0 else x, tree)


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: Mapping[str, Any], path: str) -> Any:
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _abstract_leaf(var: Any) -> Any:
    """What Orbax should restore `var` as: its shape, dtype and sharding."""
    if keras.backend.backend() != "jax":
        return np.zeros(var.shape, dtype=var.dtype)
    import jax

    return jax.ShapeDtypeStruct(tuple(var.shape), var.dtype, sharding=getattr(var.value, "sharding", None))


def _match_variables(model: Any, doc: dict[str, Any], step: int) -> list[tuple[str, str, Any]]:
    """(group, saved path, model variable) for every saved variable, in order.

    Variables are matched by position in their group, not by path: a model
    built again in the same process gets new unique names (`dense_1`).
    """
    saved = doc.get(snapshot.VARIABLES)
    if not isinstance(saved, dict):
        raise ValueError(f"Unreadable resumable state of step {step}: no valid `variables` entry.")
    pairs = []
    for group in GROUPS:
        if group not in saved:
            continue
        paths, variables = saved[group], _group(model, group)
        if len(paths) != len(variables):
            raise ValueError(
                f"The checkpoint at step {step} holds {len(paths)} {group} but the model has "
                f"{len(variables)}: it was written by a different model or optimizer."
            )
        for path, var in zip(paths, variables):
            pairs.append((group, path, var))
    return pairs


def _gather_host_rng(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every process's host RNG state (they differ when processes shuffle
    differently), gathered so that process 0 can save them all."""
    mine = {
        snapshot.RNG: doc[snapshot.RNG],
        snapshot.RNG_NOW: doc.get(snapshot.RNG_NOW),
        "arrays": {
            k: {"dtype": str(v.dtype), "data": np.asarray(v).tolist()}
            for k, v in arrays.items()
            if k.startswith(_HOST_RNG_PREFIXES)
        },
    }
    return [json.loads(part) for part in processes.allgather_bytes(json.dumps(mine).encode("utf-8"))]


def _this_process_rng(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The doc and arrays with this process's own host RNG state."""
    per = doc.get(snapshot.RNG_BY_PROCESS)
    if not per:
        return doc, arrays
    count, index = processes.count(), processes.index()
    if len(per) != count:
        warnings.warn(
            f"The checkpoint was written by {len(per)} processes and {count} are "
            "running: every process starts from process 0's host RNG state, so "
            "the batch order differs from the interrupted run.",
            UserWarning,
            stacklevel=4,
        )
        return doc, arrays
    mine = per[index]
    doc = {**doc, snapshot.RNG: mine[snapshot.RNG]}
    if mine.get(snapshot.RNG_NOW) is not None:
        doc[snapshot.RNG_NOW] = mine[snapshot.RNG_NOW]
    arrays = {k: v for k, v in arrays.items() if not k.startswith(_HOST_RNG_PREFIXES)}
    for k, a in mine["arrays"].items():
        arrays[k] = np.asarray(a["data"], dtype=np.dtype(a["dtype"]))
    return doc, arrays
