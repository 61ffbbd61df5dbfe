"""The Keras internals that positioning a grain input relies on.

Keras 3 hands `grain.MapDataset` / `grain.IterDataset` inputs of `fit` to a
`GrainDatasetAdapter`, which keeps the user's dataset in `_dataset` and, at
the start of each epoch, wraps it in a conversion map (`get_jax_iterator`,
`get_numpy_iterator`, ...) that the `EpochIterator` iterates. Each function
here is pinned by a test in `tests/unit/test_adapters_grain.py`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

#: The adapter methods that build an epoch's data from `_dataset`.
ITERATOR_METHODS = ("get_numpy_iterator", "get_jax_iterator", "get_tf_dataset", "get_torch_dataloader")


def grain_adapter_class() -> type:
    """Keras's `GrainDatasetAdapter`."""
    from keras.src.trainers.data_adapters.grain_dataset_adapter import GrainDatasetAdapter

    return GrainDatasetAdapter


def dataset_of(adapter: Any) -> Any:
    """The grain dataset given to `fit` (`GrainDatasetAdapter._dataset`)."""
    return adapter._dataset


def next_epoch_uses(adapter: Any, dataset: Any) -> None:
    """Makes the next epoch's data of `adapter` (the next call of one of
    `ITERATOR_METHODS`) come from `dataset` instead of the one given to `fit`;
    later epochs use the original again. Keras calls one of these methods
    when an epoch makes its data iterator, and it reads `_dataset` then."""
    original = adapter._dataset

    def one_shot(name: str) -> Callable[..., Any]:
        method = getattr(type(adapter), name)

        def call(*args: Any, **kwargs: Any) -> Any:
            undo_next_epoch(adapter)
            adapter._dataset = dataset
            try:
                return method(adapter, *args, **kwargs)
            finally:
                adapter._dataset = original

        call._rs_one_shot = True  # type: ignore[attr-defined]
        return call

    undo_next_epoch(adapter)
    for name in ITERATOR_METHODS:
        if hasattr(type(adapter), name):
            setattr(adapter, name, one_shot(name))


def undo_next_epoch(adapter: Any) -> None:
    """Drops what `next_epoch_uses` arranged and has not been used yet."""
    for name in ITERATOR_METHODS:
        if getattr(adapter.__dict__.get(name), "_rs_one_shot", False):
            del adapter.__dict__[name]


def _running_fit_frame(adapter: Any) -> Any:
    """The frame of the innermost `fit` whose training `EpochIterator` (its
    local `epoch_iterator`) reads from `adapter`, or None."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "fit":
            candidate = frame.f_locals.get("epoch_iterator")
            if candidate is not None and getattr(candidate, "data_adapter", None) is adapter:
                return frame
        frame = frame.f_back
    return None


def running_epoch_iterator(adapter: Any) -> Any:
    """The training `EpochIterator` of the running `fit` that reads from
    `adapter` (`fit`'s local `epoch_iterator`), or None."""
    frame = _running_fit_frame(adapter)
    return None if frame is None else frame.f_locals["epoch_iterator"]


def input_ran_out(epoch_iterator: Any) -> bool:
    """True when the data iterator of an `EpochIterator` with
    `steps_per_epoch` ran out during its latest epoch: Keras's
    `catch_stop_iteration` then drops it (`_current_iterator = None`), and
    the next epoch makes a fresh one. (Checked after the epoch has trained
    a batch: before, the iterator may not be made yet.)"""
    return bool(epoch_iterator.steps_per_epoch) and epoch_iterator._current_iterator is None


def set_epoch_length(adapter: Any, steps: int) -> None:
    """Tells the callbacks of the running `fit` of `adapter` that its epochs
    have `steps` batches (`params["steps"]`, which `fit` sets from the
    adapter's `num_batches`, None for grain), when they do not know yet.
    `fit` keeps its `CallbackList` in its local `callbacks`; the callbacks
    share its `params` dict."""
    frame = _running_fit_frame(adapter)
    if frame is None:
        return
    params = getattr(frame.f_locals.get("callbacks"), "params", None)
    if isinstance(params, dict) and params.get("steps") is None:
        params["steps"] = int(steps)


def running_data_iterator(adapter: Any) -> Any:
    """The iterator the running training epoch of `adapter` reads its
    batches from (what `EpochIterator` hands the train function), or None.

    `EpochIterator._enumerate_iterator` keeps it in `_current_iterator` when
    the epoch length is known, and otherwise in its generator's local
    `iterator` (also the name of the local of a generator wrapping it, as
    `data.skip_batches` does). `fit` keeps the `EpochIterator` in its local
    `epoch_iterator`.
    """
    frame = _running_fit_frame(adapter)
    if frame is None:
        return None
    epoch_iterator = frame.f_locals["epoch_iterator"]
    current = getattr(epoch_iterator, "_current_iterator", None)
    if current is not None:
        return current
    gen = getattr(epoch_iterator, "_epoch_iterator", None)
    gi_frame = getattr(gen, "gi_frame", None)
    if gi_frame is None:
        return None
    return gi_frame.f_locals.get("iterator")
