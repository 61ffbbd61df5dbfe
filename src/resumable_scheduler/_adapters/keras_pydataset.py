"""Keras internals that position a `PyDataset` and a carried-over data pass.

Every private Keras name used to start a `keras.utils.PyDataset` at batch
`k` without calling `__getitem__` for batches `0..k-1`, and to rebuild the
data iterator that Keras's `EpochIterator` carries from one epoch to the next
when `steps_per_epoch` is smaller than one pass over the data, lives here.
Each function is pinned by a test in tests/unit/test_adapters_pydataset.py
that names the internal it relies on.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any, Sequence


def pydataset_adapter_class() -> type:
    """Keras's `PyDatasetAdapter` (what `fit` wraps a `PyDataset` in)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    return PyDatasetAdapter


def adapter_shuffle(adapter: Any) -> Any:
    """The `shuffle` a data adapter was made with (`True`, `False` or
    `"batch"`), JSON-safe, or None when unknown: `ArrayDataAdapter._shuffle`,
    `PyDatasetAdapter.shuffle`."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    if isinstance(adapter, ArrayDataAdapter):
        value = adapter._shuffle
    elif isinstance(adapter, pydataset_adapter_class()):
        value = adapter.shuffle
    else:
        return None
    return value if isinstance(value, str) else bool(value)


def uses_enqueuer(adapter: Any) -> bool:
    """True when a `PyDatasetAdapter` reads through Keras's `OrderedEnqueuer`
    (workers > 1 or `use_multiprocessing`): `PyDatasetAdapter.enqueuer`."""
    return getattr(adapter, "enqueuer", None) is not None


def serve_from(adapter: Any, indices: Sequence[int]) -> None:
    """Makes the *next* data iterator of `adapter` (a `PyDatasetAdapter`)
    yield `py_dataset[i]` for `i` in `indices`, in that order, and call
    `__getitem__` for nothing else; later iterators are Keras's own again.

    Without workers this replaces `PyDatasetAdapter._finite_generator`
    (standardizing each batch with `_standardize_batch`); with an
    `OrderedEnqueuer` it replaces the enqueuer's `_run` (which submits
    `get_index(uid, i)` to its pool, as Keras's does, but for `indices`
    instead of a fresh, shuffled `range(len)`) and `_finite_enqueuer_generator`
    (which stops the enqueuer after `len(indices)` batches instead of `len()`),
    and empties its `ready_queue` (batches prefetched for an earlier read).
    Both are instance attributes that remove themselves on first use.
    """
    from keras.src.trainers.data_adapters import py_dataset_adapter as pda

    indices = list(indices)
    enqueuer = adapter.enqueuer

    def finite_generator():
        for i in indices:
            yield adapter._standardize_batch(adapter.py_dataset[i])

    def enqueuer_generator():
        enqueuer.start()
        if not indices:
            enqueuer.stop()
            return
        for n, batch in enumerate(enqueuer.get()):
            yield adapter._standardize_batch(batch)
            if n >= len(indices) - 1:
                enqueuer.stop()
                return

    def run():
        # Keras's OrderedEnqueuer._run, for `indices`.
        enqueuer.__dict__.pop("_run", None)
        try:
            enqueuer.indices = iter(indices)
            enqueuer._send_py_dataset()
            with closing(enqueuer.executor_fn(pda._SHARED_SEQUENCES)) as executor:
                while enqueuer.is_running():
                    try:
                        i = next(enqueuer.indices)
                        enqueuer.future_queue.put(executor.apply_async(pda.get_index, (enqueuer.uid, i)), block=True)
                    except StopIteration:
                        break
        except Exception as e:  # noqa: BLE001 - reported to the reader, as Keras does
            enqueuer.future_queue.put(e)

    def get_iterator():
        adapter.__dict__.pop("_get_iterator", None)
        return finite_generator() if enqueuer is None else enqueuer_generator()

    if enqueuer is not None:
        # Batches an earlier, stopped read left prefetched (Keras drains them
        # into `ready_queue` and serves them first) are not of this pass.
        while True:
            try:
                enqueuer.ready_queue.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                break
        enqueuer._run = run
    adapter._get_iterator = get_iterator


def cancel_serve_from(adapter: Any) -> None:
    """Undoes a `serve_from` whose iterator was never made."""
    adapter.__dict__.pop("_get_iterator", None)
    enqueuer = getattr(adapter, "enqueuer", None)
    if enqueuer is not None:
        enqueuer.__dict__.pop("_run", None)


def pass_offset(iterator: Any) -> int:
    """Batches of the current pass over the data that an `EpochIterator`'s
    earlier epochs consumed: where its next epoch starts in the data. 0 when
    the next epoch starts a fresh pass (no `steps_per_epoch`, no
    `_current_iterator` yet, or the pass ran out: Keras resets
    `_steps_seen` then)."""
    if iterator.steps_per_epoch is None or iterator._current_iterator is None:
        return 0
    return int(iterator._steps_seen)


def new_data_iterator(iterator: Any) -> Any:
    """A fresh data iterator of an `EpochIterator`, as its
    `_enumerate_iterator` makes one (`iter(self._get_iterator())`)."""
    return iter(iterator._get_iterator())


def carry(iterator: Any, data_iterator: Any, offset: int) -> None:
    """Makes an `EpochIterator`'s next epoch continue `data_iterator` as a
    pass of which `offset` batches are consumed already, as if earlier
    epochs had consumed them (`_current_iterator`, `_steps_seen`)."""
    iterator._current_iterator = data_iterator
    iterator._steps_seen = int(offset)
