"""Pins every Keras internal in `resumable_scheduler/_adapters/keras_pydataset.py`.

A Keras upgrade that changes one fails the test that covers it, with a
message naming the internal.
"""

import inspect
import random

import keras
import numpy as np
import pytest

from resumable_scheduler._adapters import keras as ki
from resumable_scheduler._adapters import keras_pydataset as kp
from tests.support import pins  # noqa: E402

PINNED = {
    "pydataset_adapter_class": "test_pydataset_adapter_class_is_what_fit_uses",
    "adapter_shuffle": "test_adapter_shuffle",
    "uses_enqueuer": "test_serve_from_with_workers",
    "serve_from": "test_serve_from_without_workers",
    "cancel_serve_from": "test_serve_from_without_workers",
    "pass_offset": "test_carried_pass",
    "new_data_iterator": "test_carried_pass",
    "carry": "test_carried_pass",
}


def internal(what):
    return pins.internal(what, "keras_pydataset.py")


class Data(keras.utils.PyDataset):
    def __init__(self, n=6, **kw):
        super().__init__(**kw)
        self.n = n
        self.served = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.served.append(int(i))
        return np.full((1, 1), i, "float32"), np.zeros((1, 1), "float32")


def first_values(iterator):
    return [float(np.asarray(keras.tree.flatten(b)[0])[0, 0]) for b in iterator]


def test_every_function_has_a_pin():
    public = {n for n, v in vars(kp).items() if inspect.isfunction(v) and v.__module__ == kp.__name__
              and not n.startswith("_")}
    assert public == set(PINNED)
    assert all(name in globals() for name in PINNED.values())


def test_pydataset_adapter_class_is_what_fit_uses():
    with internal("keras.src.trainers.data_adapters.py_dataset_adapter.PyDatasetAdapter"):
        assert isinstance(ki.epoch_iterator_class()(x=Data()).data_adapter, kp.pydataset_adapter_class())


def test_adapter_shuffle():
    cls = ki.epoch_iterator_class()
    with internal("ArrayDataAdapter._shuffle / PyDatasetAdapter.shuffle"):
        x = np.ones((4, 1), "float32")
        assert kp.adapter_shuffle(cls(x=x, batch_size=2, shuffle=True).data_adapter) is True
        assert kp.adapter_shuffle(cls(x=x, batch_size=2, shuffle="batch").data_adapter) == "batch"
        assert kp.adapter_shuffle(cls(x=Data(), shuffle=False).data_adapter) is False
        assert kp.adapter_shuffle(object()) is None


def test_pydataset_shuffle_draws_like_keras():
    """Keras's `_finite_generator` / `OrderedEnqueuer._run` order:
    `random.shuffle(list(range(len)))` from the host RNG."""
    with internal("PyDatasetAdapter._finite_generator shuffles with random.shuffle(list(range(n)))"):
        adapter = kp.pydataset_adapter_class()(Data(), shuffle=True)
        random.seed(3)
        got = first_values(adapter.get_numpy_iterator())
        random.seed(3)
        expected = list(range(6))
        random.shuffle(expected)
        assert got == [float(i) for i in expected]


def test_serve_from_without_workers():
    with internal("PyDatasetAdapter._get_iterator / _standardize_batch / py_dataset"):
        data = Data()
        adapter = kp.pydataset_adapter_class()(data)
        kp.serve_from(adapter, [4, 1])
        assert first_values(adapter.get_numpy_iterator()) == [4.0, 1.0]
        assert data.served == [4, 1]
        assert first_values(adapter.get_numpy_iterator()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        kp.serve_from(adapter, [2])
        kp.cancel_serve_from(adapter)
        assert "_get_iterator" not in vars(adapter)


def test_serve_from_with_workers():
    with internal("PyDatasetAdapter.enqueuer, OrderedEnqueuer._run / _send_py_dataset / executor_fn / "
                  "future_queue / ready_queue / uid, py_dataset_adapter._SHARED_SEQUENCES / get_index"):
        data = Data(workers=2)
        adapter = kp.pydataset_adapter_class()(data)
        assert kp.uses_enqueuer(adapter) and not kp.uses_enqueuer(kp.pydataset_adapter_class()(Data()))
        adapter.enqueuer.ready_queue.put((np.zeros((1, 1)),))  # a stale prefetched batch
        kp.serve_from(adapter, [5, 0, 3])
        adapter.on_epoch_begin()
        got = first_values(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        assert got == [5.0, 0.0, 3.0] and sorted(data.served) == [0, 3, 5]
        assert "_run" not in vars(adapter.enqueuer)


def test_carried_pass():
    cls = ki.epoch_iterator_class()
    with internal("EpochIterator._current_iterator / _steps_seen / _get_iterator / _enumerate_iterator"):
        it = cls(x=np.arange(10, dtype="float32").reshape(10, 1), batch_size=2, steps_per_epoch=3)
        assert kp.pass_offset(it) == 0
        for begin, _, iterator in it._enumerate_iterator():
            next(iterator)
        assert kp.pass_offset(it) == 3  # carried into the next epoch
        data = kp.new_data_iterator(it)
        next(data)  # batch 0 of a fresh pass
        kp.carry(it, data, 1)
        seen = []
        for begin, _, iterator in it._enumerate_iterator():
            seen.append(float(np.asarray(keras.tree.flatten(next(iterator))[0])[0, 0]))
        assert seen == [2.0, 4.0, 6.0] and kp.pass_offset(it) == 4
        free = cls(x=np.ones((4, 1), "float32"), batch_size=2)
        for _ in free._enumerate_iterator():
            pass
        assert kp.pass_offset(free) == 0
