"""The object that rides along in every Keras checkpoint of a model.

Attaching a `StateTracker` to a model as an attribute makes Keras's own
saving (`model.save`, `model.save_weights`, `ModelCheckpoint`, stock
`BackupAndRestore`) write the resumable callbacks' states into the same
`.weights.h5` / `.keras` file, as one extra HDF5 group that plain Keras
ignores on load. It also keeps the training position (epoch, batch) that all
resumable callbacks of the model share, so that the order of callbacks in the
list does not matter, and the run's timeline (`timeline.Recorder`), written
into every checkpoint.

Not thread-safe; one tracker per model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from resumable_scheduler._adapters.keras import SAVEABLE_OBJ_TYPE, KerasSaveable
from resumable_scheduler import snapshot
from resumable_scheduler.protocol import Resumable
from resumable_scheduler.timeline import TIMELINE, Recorder
from resumable_scheduler.snapshot import decode_envelope, encode_envelope

#: The model attribute (and HDF5 group) holding the tracker.
ATTR = "_resumable_scheduler_state"
#: The dataset inside that group holding the JSON envelope as uint8.
DATASET = "envelope"
#: Datasets `arrays::<state_key>::<name>` in that group hold the arrays of
#: resumables that also implement `get_arrays()` / `set_arrays(dict)` (state
#: too large for JSON, such as EarlyStopping's best weights); datasets
#: `training::<name>` the arrays of a backup's training state (RNG keys, seed
#: generators, metric accumulators; see `StateTracker.extra`). The names are
#: the snapshot's (`snapshot.array_name`).
ARRAY_PREFIX = snapshot.ARRAY_PREFIX
TRAINING_PREFIX = snapshot.TRAINING_PREFIX


def split_arrays(store: Any) -> dict[str, dict[str, np.ndarray]]:
    """The `arrays::<key>::<name>` datasets of `store`, by key then name."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for full in store.keys():
        if full.startswith(ARRAY_PREFIX) and "::" in full[len(ARRAY_PREFIX):]:
            key, name = full[len(ARRAY_PREFIX):].split("::", 1)
            out.setdefault(key, {})[name] = np.asarray(store[full])
    return out


def _give_arrays(obj: Any, arrays: Mapping[str, np.ndarray] | None) -> None:
    if arrays and hasattr(obj, "set_arrays"):
        obj.set_arrays(arrays)


class StateTracker(KerasSaveable):
    """Registry of a model's resumable callbacks plus the shared position."""

    def __init__(self) -> None:
        self._resumables: dict[str, Resumable] = {}
        self._model_ref: Any = None  # weakref to the model, set by tracker_for
        self._unclaimed: dict[str, Mapping[str, Any]] = {}
        self._unclaimed_arrays: dict[str, dict[str, np.ndarray]] = {}
        #: The position (see "the training position" below): the next batch
        #: to train is `batch` of `epoch`.
        self.epoch = 0
        self.batch = 0
        #: Batches per epoch and epochs of the running fit (None: unknown).
        self.steps: int | None = None
        self.epochs: int | None = None
        #: Batches of the training epoch done so far (not wrapped to the next
        #: epoch at its end, unlike `batch`).
        self.done = 0
        #: State keys whose `on_epoch_end` a resumed run replays from the
        #: epoch-end checkpoint being written (set only while it is written).
        self.epoch_end_replayed: frozenset[str] = frozenset()
        #: The epoch `fit` is training (set at its start): batch positions
        #: derive from it, so reporting a batch twice changes nothing.
        self._training_epoch = 0
        #: Set by a backup only while it writes: (top-level envelope items such
        #: as the position and RNG scalars, arrays stored as `training::*`).
        self.extra: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        #: The run's timeline: the past segments of the checkpoint resumed
        #: from, and this process's (written into every checkpoint).
        self.timeline = Recorder()

    # Keras walks `dir()` of everything it saves; nothing below us is saveable.
    def __dir__(self) -> list[str]:
        return []

    def _obj_type(self) -> str:
        return SAVEABLE_OBJ_TYPE

    # -- registry -------------------------------------------------------------

    def register(self, obj: Resumable, fit_callbacks: list[Any] | None = None) -> None:
        """Adds `obj` under its `state_key`; a state loaded earlier is handed over.

        `fit_callbacks` (the callbacks of the `fit` that is starting) drops
        the callbacks of earlier fits that are not in it. Two callbacks of
        one fit with the same `state_key` (two `rs.LearningRateScheduler`,
        say) never overwrite each other: the second one's key becomes
        `"<state_key>#2"`, the third's `"#3"`, in the order of the list, so
        a rerun of the same script finds each state again. By default
        `fit_callbacks` is read from the running `fit` of the tracker's model.
        """
        if fit_callbacks is None and self._model_ref is not None:
            model = self._model_ref()
            if model is not None:
                from resumable_scheduler._adapters.keras import running_fit_callbacks

                fit_callbacks = running_fit_callbacks(model)
        if fit_callbacks is not None:
            live = {id(c) for c in fit_callbacks}
            for key, other in list(self._resumables.items()):
                if id(other) not in live:
                    del self._resumables[key]
        taken = {k for k, other in self._resumables.items() if other is not obj}
        key = _free_key(obj.state_key, taken)
        if key != obj.state_key:
            obj.state_key = key  # type: ignore[misc] - per instance from now on
        for other_key, other in list(self._resumables.items()):
            if other is obj and other_key != key:
                del self._resumables[other_key]
        self._resumables[key] = obj
        if key in self._unclaimed:
            obj.set_state(self._unclaimed.pop(key))
            _give_arrays(obj, self._unclaimed_arrays.pop(key, None))

    def resumables(self) -> dict[str, Resumable]:
        return dict(self._resumables)

    def collect(self) -> dict[str, dict[str, Any]]:
        """Every registered callback's current state, by key."""
        return {k: obj.get_state() for k, obj in self._resumables.items()}

    def collect_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """The arrays of every registered callback that has `get_arrays`, by key."""
        return {
            k: dict(obj.get_arrays()) for k, obj in self._resumables.items() if hasattr(obj, "get_arrays")
        }

    def apply(
        self,
        states: Mapping[str, Mapping[str, Any]],
        arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> list[str]:
        """Hands each state (then its arrays, if any) to its callback;
        returns the keys applied."""
        arrays = arrays or {}
        applied = []
        for key, st in states.items():
            if key in self._resumables:
                self._resumables[key].set_state(st)
                _give_arrays(self._resumables[key], arrays.get(key))
                applied.append(key)
            else:
                self._unclaimed[key] = st
                if key in arrays:
                    self._unclaimed_arrays[key] = dict(arrays[key])
        return applied

    # -- the training position ---------------------------------------------------
    #
    # The tracker is the one owner of the position of its model's fit. Every
    # resumable callback reports what it sees (the calls are idempotent, so
    # the order of the callbacks does not matter and several may report the
    # same event); checkpoints and callback states read it from here.

    def begin_fit(self, params: Mapping[str, Any] | None) -> None:
        """A fit starts (`on_train_begin`): learns its batches per epoch."""
        self.steps = (params or {}).get("steps")
        epochs = (params or {}).get("epochs")
        self.epochs = epochs if type(epochs) is int else None
        self.timeline.begin_fit()

    def end_fit(self, cause: str = "finished") -> None:
        """The fit ended (`on_train_end`; `"finished"` unless a preemption
        or an exception said otherwise first)."""
        self.timeline.end(cause)

    def set_position(self, epoch: int, batch: int) -> None:
        """Batch `batch` of `epoch` is next: a restored state's position, or
        the start of an epoch (at the batch a resumed epoch skips to)."""
        self.epoch, self.batch = int(epoch), int(batch)
        self._training_epoch, self.done = self.epoch, self.batch
        self.timeline.at_position(self._here)

    def _here(self) -> snapshot.Position:
        """The position now, with the optimizer's step (read from the model:
        call only where its variables are in sync, such as an epoch's start)."""
        return snapshot.Position(self.epoch, self.batch, self._step())

    def _step(self) -> int:
        model = self._model_ref() if self._model_ref is not None else None
        optimizer = getattr(model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return 0
        import keras

        return int(keras.ops.convert_to_numpy(iterations))

    def note_epoch_begin(self, epoch: int) -> None:
        """Epoch `epoch` starts: at the restored batch if it is the restored
        epoch, at batch 0 otherwise."""
        if epoch != self.epoch:
            self.epoch, self.batch = epoch, 0
        self._training_epoch, self.done = epoch, self.batch
        self.timeline.at_position(self._here)

    def note_batch_begin(self, batch: int, steps_per_execution: int = 1) -> None:
        """Batch `batch` (and the rest of its execution) is being trained: a
        checkpoint written at its end must count it as done."""
        self._note_done(batch + steps_per_execution)
        self.timeline.batch_begun()

    def note_batch_end(self, batch: int) -> None:
        """Batch `batch` (the last of its execution) has been trained."""
        self._note_done(batch + 1)
        self.timeline.batch_done()

    def _note_done(self, done: int) -> None:
        self.done = done
        if self.steps is not None and done >= self.steps:
            self.epoch, self.batch = self._training_epoch + 1, 0
        else:
            self.epoch, self.batch = self._training_epoch, done

    def note_epoch_end(self, epoch: int) -> None:
        """Epoch `epoch` ends. With a known epoch length, a batch count short
        of it means fit was stopped mid-epoch (preemption): the mid-epoch
        position is kept."""
        if self.epoch == epoch and (self.steps is None or self.batch == 0 or self.batch >= self.steps):
            self.epoch, self.batch = epoch + 1, 0
        if self.epoch == epoch + 1 and self.batch == 0 and self.epochs is not None and self.epoch >= self.epochs:
            # The fit's last epoch is done: its checkpoints say so.
            self.timeline.end("finished")

    @property
    def training_epoch(self) -> int:
        """The epoch being trained (or last trained)."""
        return self._training_epoch

    # -- Keras saving hooks ---------------------------------------------------

    def save_own_variables(self, store: Any) -> None:
        extra_doc, extra_arrays = self.extra or ({}, {})
        if TIMELINE not in extra_doc:
            # Keras's own saving (`model.save`, `ModelCheckpoint`): the
            # timeline up to the tracker's position.
            extra_doc = {**extra_doc, TIMELINE: self.timeline.commit(self._here())}
        data = encode_envelope(self.collect(), extra=extra_doc)
        store[DATASET] = np.frombuffer(data, dtype=np.uint8)
        for name, value in extra_arrays.items():
            store[snapshot.array_name(name)] = np.asarray(value)
        for key, arrays in self.collect_arrays().items():
            for name, value in arrays.items():
                store[snapshot.array_name(name, key)] = np.asarray(value)

    def load_own_variables(self, store: Any) -> None:
        if DATASET not in store:
            warn_no_state("this checkpoint")
            return
        doc = decode_envelope(np.asarray(store[DATASET], dtype=np.uint8).tobytes())
        self.apply(doc[snapshot.CALLBACKS], split_arrays(store))
        self.restore_timeline(doc)

    def restore_timeline(self, doc: Mapping[str, Any]) -> None:
        """Takes the timeline of a checkpoint being loaded (`doc`: its envelope)."""
        run = doc.get(snapshot.RUN)
        epochs = run.get("epochs") if isinstance(run, dict) else None
        self.timeline.restore(doc.get(TIMELINE), epochs if type(epochs) is int else None)


def distinct_keys(objs: Any) -> None:
    """Gives callbacks that share a `state_key` the keys a tracker would:
    the first keeps it, the second gets `"<key>#2"`, and so on, in order.

    >>> class Cb:
    ...     state_key = "S"
    >>> a, b = Cb(), Cb()
    >>> distinct_keys([a, b]); (a.state_key, b.state_key)
    ('S', 'S#2')
    """
    taken: set[str] = set()
    for obj in objs:
        key = _free_key(obj.state_key, taken)
        taken.add(key)
        if key != obj.state_key:
            obj.state_key = key


def _free_key(state_key: str, taken: set[str]) -> str:
    """The first of `<base>`, `<base>#2`, `<base>#3`, ... not in `taken`."""
    base = state_key.split("#", 1)[0]
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}#{n}"
    return key


def warn_no_state(where: str) -> None:
    warnings.warn(
        f"No resumable_scheduler state found in {where} (it was written by stock "
        "Keras or without a resumable callback); each resumable callback starts "
        "from the optimizer's current learning rate and its own initial state.",
        UserWarning,
        stacklevel=3,
    )


def tracker_for(model: Any) -> StateTracker:
    """The model's tracker, attached on first use."""
    tracker = model.__dict__.get(ATTR)
    if not isinstance(tracker, StateTracker):
        tracker = StateTracker()
        import weakref

        tracker._model_ref = weakref.ref(model)
        # object.__setattr__ keeps Keras's attribute tracking out of it.
        object.__setattr__(model, ATTR, tracker)
    return tracker
