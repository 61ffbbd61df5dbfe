"""Pins the Keras internals `resumable_scheduler._adapters.keras_grain` uses.

When a Keras upgrade changes one, the test that covers it fails with a
message naming the internal."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

grain = pytest.importorskip("grain")

from resumable_scheduler._adapters import keras_grain as kg  # noqa: E402
from tests.support import pins  # noqa: E402

PINNED = {
    "ITERATOR_METHODS": "test_next_epoch_uses_swaps_the_dataset_once",
    "grain_adapter_class": "test_grain_adapter_class_is_what_fit_uses",
    "dataset_of": "test_grain_adapter_class_is_what_fit_uses",
    "next_epoch_uses": "test_next_epoch_uses_swaps_the_dataset_once",
    "undo_next_epoch": "test_next_epoch_uses_swaps_the_dataset_once",
    "set_epoch_length": "test_running_fit_locals",
    "running_data_iterator": "test_running_fit_locals",
    "running_epoch_iterator": "test_running_fit_locals",
    "input_ran_out": "test_a_carried_iterator_that_runs_out_is_dropped",
}


def internal(what):
    return pins.internal(what, "keras_grain.py")


def test_every_internal_has_a_pin():
    public = {n for n, v in vars(kg).items() if not n.startswith("_")
              and ((inspect.isfunction(v) and v.__module__ == kg.__name__) or n.isupper())}
    assert public == set(PINNED), f"pin {sorted(public - set(PINNED))} in tests/unit/test_adapters_grain.py"
    assert set(PINNED.values()) <= {n for n in globals() if n.startswith("test_")}


def batches(n=8):
    xs = np.arange(n * 3, dtype="float32").reshape(n, 3)
    return grain.MapDataset.range(n).map(lambda i: (xs[i], xs[i, :1])).batch(2)


def model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile("sgd", "mse")
    return m


def test_grain_adapter_class_is_what_fit_uses():
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            from resumable_scheduler._adapters import keras as ki

            seen.append(ki.running_epoch_iterator(self.model).data_adapter)

    ds = batches()
    with internal("keras.src.trainers.data_adapters.grain_dataset_adapter.GrainDatasetAdapter and its _dataset"):
        model().fit(ds, epochs=1, verbose=0, callbacks=[Spy()])
        assert isinstance(seen[0], kg.grain_adapter_class())
        assert kg.dataset_of(seen[0]) is ds


def test_next_epoch_uses_swaps_the_dataset_once():
    ds = batches()
    with internal("GrainDatasetAdapter.get_*_iterator read _dataset when called"):
        adapter = kg.grain_adapter_class()(ds)
        for name in kg.ITERATOR_METHODS:
            assert callable(getattr(adapter, name))
        kg.next_epoch_uses(adapter, ds[3:])
        first = [b[0][0, 0] for b in adapter.get_jax_iterator()]
        again = [b[0][0, 0] for b in adapter.get_jax_iterator()]
        assert first == [18.0] and again == [0.0, 6.0, 12.0, 18.0]
        assert kg.dataset_of(adapter) is ds
        kg.next_epoch_uses(adapter, ds[3:])
        kg.undo_next_epoch(adapter)
        assert len([b for b in adapter.get_numpy_iterator()]) == 4


def test_running_fit_locals():
    got = {}

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            from resumable_scheduler._adapters import keras as ki

            adapter = ki.running_epoch_iterator(self.model).data_adapter
            got.setdefault("epoch_iterator", kg.running_epoch_iterator(adapter))
            got.setdefault("fit_epoch_iterator", ki.running_epoch_iterator(self.model))
            got.setdefault("it", kg.running_data_iterator(adapter))
            got.setdefault("state", got["it"].get_state())
            kg.set_epoch_length(adapter, 4)
            got["steps"] = self.params["steps"]

    with internal("fit's locals epoch_iterator / callbacks, EpochIterator._current_iterator and "
                  "_enumerate_iterator's local 'iterator'"):
        assert kg.running_data_iterator(object()) is None
        assert kg.running_epoch_iterator(object()) is None
        model().fit(batches().to_iter_dataset(), epochs=2, verbose=0, callbacks=[Spy()])
        assert got["epoch_iterator"] is got["fit_epoch_iterator"] is not None
        assert isinstance(got["it"], grain.DatasetIterator)
        assert got["state"] == {"next_index": 1}  # one batch read: the one trained
        assert got["steps"] == 4


def test_a_carried_iterator_that_runs_out_is_dropped():
    # 4 batches, steps_per_epoch=3: epochs of 3 and 1 batches (the carried
    # iterator runs out in the second, and Keras drops it), then 3 again.
    ended = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            from resumable_scheduler._adapters import keras as ki

            ended.append(kg.input_ran_out(ki.running_epoch_iterator(self.model)))

    with internal("EpochIterator.steps_per_epoch / _current_iterator (None after catch_stop_iteration)"), \
            pytest.warns(UserWarning, match="ran out of data"):
        model().fit(batches().to_iter_dataset(), epochs=3, steps_per_epoch=3, verbose=0, callbacks=[Spy()])
    assert ended == [False, True, False]
    assert not kg.input_ran_out(type("It", (), {"steps_per_epoch": None, "_current_iterator": None})())


def test_keras_leaves_the_pass_length_unknown_and_the_positioner_knows_it():
    # With steps_per_epoch smaller than a pass, resumable_scheduler.data
    # tracks the carried pass using the positioner's `batches`, as Keras
    # reports no `num_batches` for grain inputs.
    from resumable_scheduler import data
    from resumable_scheduler.data import grain as positioner

    ds = batches()
    with internal("GrainDatasetAdapter.num_batches is None"):
        adapter = kg.grain_adapter_class()(ds)
        assert adapter.num_batches is None
    assert positioner.batches(adapter) == 4
    assert data._pass_batches(type("It", (), {"data_adapter": adapter})()) == 4
    assert positioner.batches(kg.grain_adapter_class()(ds.to_iter_dataset())) is None
