"""Every use of private `keras.src` internals, in one place.

Keras has no public hook for "save this extra object with the model", nor for
starting an epoch at a batch other than 0. What we rely on is listed here and
pinned by `tests/unit/test_adapters.py`, which fails loudly when a Keras
upgrade changes any of it.
"""

from __future__ import annotations

from typing import Any

import keras
from keras.src.saving.keras_saveable import KerasSaveable  # noqa: F401
from keras.src.saving import saving_lib

#: `_walk_saveable` only accepts these object types (see `get_attr_skipset`).
SAVEABLE_OBJ_TYPE = "Operation"


def known_obj_types() -> None:
    """Raises if Keras no longer accepts `SAVEABLE_OBJ_TYPE`."""
    saving_lib.get_attr_skipset(SAVEABLE_OBJ_TYPE)


def sync_model_state(model: Any) -> None:
    """Writes the JAX trainer's in-flight state back into the model variables.

    On the JAX backend, during `fit`, variables live in `model._jax_state`
    until an epoch ends; reading them mid-epoch needs this sync.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def seed_generators(model: Any) -> list[Any]:
    """All `keras.random.SeedGenerator`s reachable from the model's layers."""
    from keras.src.random.seed_generator import SeedGenerator

    found: list[Any] = []
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in getattr(layer, "_seed_generators", []) or []:
            if isinstance(v, SeedGenerator) and id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    return found


def global_seed_generator() -> Any:
    """Keras's global SeedGenerator (used by unseeded `keras.random` calls), or None."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("global_seed_generator")


KERAS_VERSION = keras.__version__


def print_msg(message: str) -> None:
    """Prints like Keras's own callbacks (stdout or absl logging)."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


class _InitialEpoch(int):
    """`model._initial_epoch` for one `fit` only.

    Every backend's `fit` reads it once, right after all the callbacks'
    `on_train_begin`, as `self._initial_epoch or initial_epoch`: the truth
    test is that read. It clears the attribute (so a later `fit`, or one
    left behind by a `fit` that raised, is never moved), answers False when
    read by a `fit` that does not run `owner`, and otherwise runs
    `after_train_begin` once: the moment every callback has started and no
    epoch has begun.
    """

    _model_ref: Any
    _owner: Any
    _after: Any

    def __bool__(self) -> bool:
        model = self._model_ref()
        if model is not None and model.__dict__.get("_initial_epoch") is self:
            model._initial_epoch = None
        if self._owner is not None and (model is None or not in_fit_with(model, self._owner)):
            return False
        after, self._after = self._after, None
        if after is not None:
            after()
        return int(self) != 0


def set_initial_epoch(
    model: Any,
    epoch: int | None,
    owner: Any = None,
    after_train_begin: Any = None,
) -> None:
    """Makes the running `fit` start at `epoch` (as stock BackupAndRestore does).

    `fit` reads `model._initial_epoch` right after `on_train_begin`. With
    `owner` (the callback calling this), only a `fit` running `owner` is
    moved, once; `after_train_begin()` then runs at that read (see
    `_InitialEpoch`).
    """
    if epoch is None or owner is None:
        model._initial_epoch = epoch
        return
    import weakref

    value = _InitialEpoch(epoch)
    value._model_ref = weakref.ref(model)
    value._owner = owner
    value._after = after_train_begin
    model._initial_epoch = value


def epoch_iterator_class() -> type:
    """Keras's `EpochIterator`, whose `_enumerate_iterator` yields the steps."""
    from keras.src.trainers.epoch_iterator import EpochIterator

    return EpochIterator


def resumable_adapter_classes() -> tuple[type, ...]:
    """Data adapters whose batch order is a function of the host RNG state:
    NumPy/JAX arrays (shuffled with `np.random`) and `PyDataset` (shuffled
    with `random`), so skipping the first batches of a re-created epoch lands
    exactly where the interrupted one stopped."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    return (ArrayDataAdapter, PyDatasetAdapter)


def model_config_json(model: Any) -> str:
    """The model config as the JSON string stock `OrbaxCheckpoint` saves in
    its `model_config` checkpointable (what `keras.models.load_model` reads
    from an Orbax directory)."""
    config_json, _ = saving_lib._serialize_model_as_json(model)
    return config_json


def model_assets(model: Any) -> Any:
    """The model's assets as stock `OrbaxCheckpoint` saves them, or None."""
    return saving_lib._save_assets_to_dict(model)


def in_fit_of(model: Any) -> bool:
    """True when called (directly or not) from `model.fit`.

    Keras runs callbacks and the epoch iterator inside the frame of the
    model's `fit` method; a hook left installed by a `fit` that raised must
    not act on a later, unrelated one.
    """
    return _fit_frame(model) is not None


def _fit_frame(model: Any) -> Any:
    import sys

    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def running_fit_callbacks(model: Any) -> list[Any] | None:
    """The callbacks of the innermost `model.fit` running on this thread's
    stack (its `CallbackList`'s `callbacks`), or None outside any fit.

    Keras's `fit` keeps its `CallbackList` in the local variable `callbacks`.
    """
    frame = _fit_frame(model)
    if frame is None:
        return None
    cbs = frame.f_locals.get("callbacks")
    if isinstance(cbs, (list, tuple)):
        # Still the user's list: `fit` is building its CallbackList (whose
        # constructor calls `set_model`); Keras adds History and the progress
        # bar to it, which are never resumable.
        return list(cbs)
    return list(getattr(cbs, "callbacks", None) or [])


def running_fit_callback_list(model: Any) -> Any:
    """The `CallbackList` object of the innermost running `model.fit`, or
    None (outside any fit, or while `fit` is still building it). It lives
    exactly as long as that `fit`'s frame: when `fit` raises, it is freed
    once the exception (and its traceback) is dropped."""
    frame = _fit_frame(model)
    if frame is None:
        return None
    cbs = frame.f_locals.get("callbacks")
    return cbs if hasattr(cbs, "callbacks") and not isinstance(cbs, (list, tuple)) else None


def in_fit_with(model: Any, callback: Any) -> bool:
    """True when called from a `model.fit` whose callbacks include `callback`.

    A hook left behind by a `fit` that raised (Keras then skips
    `on_train_end`) must not act on a later `fit` of the same model that does
    not use that callback.
    """
    cbs = running_fit_callbacks(model)
    return cbs is not None and any(c is callback for c in cbs)


def running_epoch_iterator(model: Any) -> Any:
    """The training `EpochIterator` of the innermost running `model.fit`, or
    None outside any fit (or before `fit` has made it).

    Keras's `fit` keeps it in the local variable `epoch_iterator`; iterators
    that `evaluate` or `predict` make inside the fit are other objects.
    """
    frame = _fit_frame(model)
    if frame is None:
        return None
    it = frame.f_locals.get("epoch_iterator")
    return it if isinstance(it, epoch_iterator_class()) else None


def epoch_input(iterator: Any) -> dict[str, Any]:
    """What the batch positions of an `EpochIterator`'s epochs depend on, as
    JSON: `adapter` (data adapter class name), `steps` (batches per epoch,
    what `fit` passes as `params["steps"]`), `steps_per_epoch` (the `fit`
    argument, or None), `steps_per_execution`, `batches` (batches in one pass
    over the data, None if unknown; a `PyDataset`'s `len()`), and for arrays
    `samples` and `batch_size` (`ArrayDataAdapter._num_samples` /
    `_batch_size`)."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    def as_int(v: Any) -> int | None:
        return None if v is None else int(v)

    adapter = iterator.data_adapter
    out: dict[str, Any] = {
        "adapter": type(adapter).__name__,
        "steps": as_int(iterator.num_batches),
        "steps_per_epoch": as_int(iterator.steps_per_epoch),
        "steps_per_execution": as_int(iterator.steps_per_execution),
        "batches": as_int(adapter.num_batches),
    }
    if isinstance(adapter, ArrayDataAdapter):
        out["samples"] = int(adapter._num_samples)
        out["batch_size"] = int(adapter._batch_size)
    return out


# -- background saves: record what `save_weights` writes, write it later -------


class _RecordedEntry:
    """One `weights_store.make(path, metadata)` of Keras's saving walk: the
    items a saveable's `save_own_variables` set, as host copies."""

    def __init__(self, items: list[tuple[str, Any]], copy: Any) -> None:
        self._items = items
        self._copy = copy

    def __setitem__(self, key: str, value: Any) -> None:
        self._items.append((key, self._copy(value)))

    def __getitem__(self, key: str) -> Any:
        for k, v in reversed(self._items):
            if k == key:
                return v
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self._items)

    def keys(self) -> list[str]:
        return list(dict(self._items))

    def __len__(self) -> int:
        return len(dict(self._items))


class _WeightsRecorder(saving_lib.H5IOStore):
    """Stands in for the `H5IOStore` that `model.save_weights` writes to
    (`_save_state` accepts only that type), records every `make` and item,
    and opens no file."""

    def __init__(self, copy: Any) -> None:  # noqa: D107 - no file is opened
        self.mode = "w"
        self.groups: list[tuple[tuple[Any, ...], dict[str, Any], list[tuple[str, Any]]]] = []
        self._copy = copy

    def __bool__(self) -> bool:
        return True

    def make(self, *args: Any, **kwargs: Any) -> _RecordedEntry:
        items: list[tuple[str, Any]] = []
        self.groups.append((args, dict(kwargs), items))
        return _RecordedEntry(items, self._copy)

    def close(self) -> None:
        pass


def record_weights(model: Any, copy: Any) -> list[Any]:
    """Runs Keras's `model.save_weights` walk (every saveable's
    `save_own_variables`, in Keras's order) without writing a file: returns
    what it would write, each value passed through `copy` (which must return
    a host NumPy copy that nothing else changes). `write_weights(records,
    target)` later writes exactly the file `save_weights` would have written
    at the moment of this call."""
    if not model.built:
        raise ValueError(
            "You are saving a model that has not yet been built. "
            "Try building the model first by calling it on some data or "
            "by using `build()`."
        )
    recorder = _WeightsRecorder(copy)
    saving_lib._save_state(
        model, weights_store=recorder, assets_store=None, inner_path="", visited_saveables=set()
    )
    return recorder.groups


def write_weights(records: list[Any], target: Any) -> None:
    """Writes `record_weights`'s records as a `.weights.h5` file to `target`
    (a path or an `io.BytesIO`), through Keras's own `H5IOStore`: the same
    groups, attributes and datasets, in the same order, as `save_weights`."""
    store = saving_lib.H5IOStore(target, mode="w")
    try:
        for args, kwargs, items in records:
            entry = store.make(*args, **kwargs)
            for key, value in items:
                entry[key] = value
    finally:
        store.close()


#: The `CallbackList` methods `fit` calls (evaluation inside `fit` included):
#: an exception of any callback passes through one of them.
_FIT_HOOKS = (
    "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
    "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end", "on_train_end",
)


def on_callback_exception(model: Any, handler: Any) -> bool:
    """Makes `handler()` run when any callback of the running `model.fit`
    raises, before the exception leaves `fit` (Keras skips `on_train_end`
    then). Call it from a callback's `on_train_begin`; returns False outside
    a fit.

    `fit` calls its callbacks through the `CallbackList` held in its local
    `callbacks`; the hooks above are wrapped on that instance only (it lives
    as long as that fit; the wrappers hold it weakly, so it is still freed
    as soon as the fit's exception is dropped).
    """
    import functools
    import weakref

    cl = running_fit_callback_list(model)
    if cl is None:
        return False
    cl_ref = weakref.ref(cl)

    def guard(name: str) -> Any:
        # A hook wrapped already (a second callback asking) holds no
        # reference to the list; Keras's own method is called unbound.
        wrapped = cl.__dict__.get(name)
        method = getattr(type(cl), name)

        @functools.wraps(method)
        def hook(*args: Any, **kwargs: Any) -> Any:
            try:
                if wrapped is not None:
                    return wrapped(*args, **kwargs)
                return method(cl_ref(), *args, **kwargs)
            except BaseException:
                handler()
                raise

        return hook

    for name in _FIT_HOOKS:
        if hasattr(type(cl), name):
            setattr(cl, name, guard(name))
    return True


# -- private attributes of public Keras objects -----------------------------------


def model_of(callback: Any) -> Any:
    """The model a callback is attached to, or None, *without* the JAX state
    sync that `Callback.model` performs on every read (`Callback._model`).
    Callers that need the trained values mid-epoch call `sync_model_state`."""
    return getattr(callback, "_model", None)


def set_monitor_op(callback: Any) -> None:
    """`MonitorCallback._set_monitor_op()`: picks `monitor_op` (and the sign
    of `best`) from `mode` and the monitored metric."""
    callback._set_monitor_op()


def is_improvement(callback: Any, current: Any, reference: Any) -> bool:
    """`MonitorCallback._is_improvement(current, reference)`, with the
    callback's `min_delta`."""
    return bool(callback._is_improvement(current, reference))


def reset_plateau(callback: Any) -> None:
    """`ReduceLROnPlateau._reset()`: best, cooldown counter and wait."""
    callback._reset()


def learning_rate_slot(optimizer: Any) -> Any:
    """What the optimizer holds as its rate (`optimizer._learning_rate`): a
    variable, or a schedule object whose rate cannot be set; None if absent."""
    return getattr(optimizer, "_learning_rate", None)


def clear_initial_epoch_of(model: Any, owner: Any) -> None:
    """Clears `model._initial_epoch` if `owner` set it (a `fit` that raised
    before reading it leaves it behind)."""
    left = model.__dict__.get("_initial_epoch")
    if getattr(left, "_owner", None) is owner:
        model._initial_epoch = None
