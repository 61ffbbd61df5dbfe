"""Pins every private Keras internal that resumable_scheduler relies on.

All of them are used through `src/resumable_scheduler/_keras_internals.py`.
When a Keras upgrade changes one, the test below that covers it fails with a
message naming the internal, instead of training silently going wrong.
"""

import contextlib
import importlib
import inspect

import h5py
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import _keras_internals as ki
from resumable_scheduler import tracker as tracker_mod

# Every public name of _keras_internals, and the test that pins it.
PINNED = {
    "KerasSaveable": "test_keras_saveable_import",
    "SAVEABLE_OBJ_TYPE": "test_saveable_obj_type_is_accepted",
    "known_obj_types": "test_saveable_obj_type_is_accepted",
    "sync_model_state": "test_sync_model_state_exposes_mid_epoch_values",
    "seed_generators": "test_seed_generators_finds_a_dropout_generator",
    "global_seed_generator": "test_global_seed_generator",
    "KERAS_VERSION": "test_keras_version",
    "print_msg": "test_print_msg_prints_like_keras_callbacks",
    "set_initial_epoch": "test_set_initial_epoch_moves_the_running_fit",
    "epoch_iterator_class": "test_epoch_iterator_class",
    "resumable_adapter_classes": "test_resumable_adapter_classes_are_what_fit_uses",
    "model_config_json": "test_model_config_and_assets_are_what_stock_orbax_saves",
    "model_assets": "test_model_config_and_assets_are_what_stock_orbax_saves",
    "in_fit_of": "test_callbacks_and_the_epoch_iterator_run_inside_fit",
    "running_fit_callbacks": "test_fit_keeps_its_callback_list_in_a_local",
    "in_fit_with": "test_fit_keeps_its_callback_list_in_a_local",
    "running_fit_callback_list": "test_fit_keeps_its_callback_list_in_a_local",
    "running_epoch_iterator": "test_fit_keeps_its_training_epoch_iterator_in_a_local",
    "epoch_input": "test_epoch_input_reads_what_a_position_depends_on",
}


@contextlib.contextmanager
def internal(what):
    """Turns any failure into one loud message naming the internal."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported below
        pytest.fail(
            f"Keras internal changed: {what} (keras {keras.__version__}). "
            f"Update src/resumable_scheduler/_keras_internals.py. Cause: "
            f"{type(e).__name__}: {e}",
            pytrace=False,
        )


def test_every_internal_has_a_pin():
    public = {
        name
        for name, value in vars(ki).items()
        if not name.startswith("_")
        and (
            (inspect.isfunction(value) and value.__module__ == ki.__name__)
            or name.isupper()
            or name == "KerasSaveable"
        )
    }
    unpinned = sorted(public - set(PINNED))
    assert not unpinned, (
        f"_keras_internals exposes {unpinned} without a test in tests/test_keras_internals.py; "
        "add one to PINNED and pin what it relies on"
    )
    tests = {name for name in globals() if name.startswith("test_")}
    assert set(PINNED.values()) <= tests


def tiny_model():
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def test_keras_saveable_import():
    with internal("keras.src.saving.keras_saveable.KerasSaveable"):
        mod = importlib.import_module("keras.src.saving.keras_saveable")
        assert ki.KerasSaveable is mod.KerasSaveable
        assert hasattr(mod.KerasSaveable, "_obj_type")
        assert issubclass(tracker_mod.StateTracker, mod.KerasSaveable)


def test_saveable_obj_type_is_accepted():
    with internal(f"keras.src.saving.saving_lib.get_attr_skipset({ki.SAVEABLE_OBJ_TYPE!r})"):
        from keras.src.saving import saving_lib

        ki.known_obj_types()
        skipset = saving_lib.get_attr_skipset(ki.SAVEABLE_OBJ_TYPE)
        # Our attribute on the model must not be skipped by the walk.
        assert tracker_mod.ATTR not in skipset
        assert tracker_mod.ATTR not in saving_lib.get_attr_skipset("Sequential")


def test_saving_walks_the_tracker_into_the_weights_file(tmp_path):
    with internal("keras.src.saving.saving_lib._walk_saveable / _save_state (the tracker attribute is saved)"):
        model = tiny_model()
        x, y = np.ones((5, 20), "float32"), np.zeros((5, 10), "float32")
        model.fit(x, y, epochs=1, verbose=0, callbacks=[rs.LearningRateScheduler(lambda e, lr: lr)])
        path = str(tmp_path / "m.weights.h5")
        model.save_weights(path)
        with h5py.File(path, "r") as f:
            assert f"{tracker_mod.ATTR}/vars/{tracker_mod.DATASET}" in f
            assert f[f"{tracker_mod.ATTR}/vars/{tracker_mod.DATASET}"].dtype == np.uint8
        assert rs.read_state(path)["epoch"] == 1


def test_loading_hands_the_tracker_its_group(tmp_path):
    with internal("keras.src.saving.saving_lib._load_state (the tracker's load_own_variables is called)"):
        model = tiny_model()
        x, y = np.ones((5, 20), "float32"), np.zeros((5, 10), "float32")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[rs.LearningRateScheduler(lambda e, lr: lr / 2)])
        path = str(tmp_path / "m.weights.h5")
        model.save_weights(path)

        other = tiny_model()
        cb = rs.LearningRateScheduler(lambda e, lr: lr / 2)
        cb.set_model(other)  # attaches the tracker and registers the callback
        other.optimizer.build(other.trainable_variables)
        other.load_weights(path)
        assert cb.state.epoch == 2
        assert cb.state.history == pytest.approx([0.005, 0.0025])


def test_sync_model_state_exposes_mid_epoch_values():
    with internal("JAX trainer method `jax_state_sync` (mid-epoch variable sync)"):
        if keras.backend.backend() == "jax":
            assert callable(getattr(keras.Model, "jax_state_sync", None))
        seen = []

        class Probe(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ki.sync_model_state(self.model)
                seen.append(int(self.model.optimizer.iterations))

        model = tiny_model()
        model.fit(np.ones((5, 20), "float32"), np.zeros((5, 10), "float32"), batch_size=1,
                  epochs=1, verbose=0, callbacks=[Probe()])
        assert seen == [1, 2, 3, 4, 5]


def test_seed_generators_finds_a_dropout_generator():
    with internal("Layer._flatten_layers / Layer._seed_generators / keras.src.random.seed_generator.SeedGenerator"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
        gens = ki.seed_generators(model)
        assert len(gens) == 1
        assert isinstance(gens[0], keras.random.SeedGenerator)
        assert gens[0] is model.layers[0].seed_generator


def test_global_seed_generator():
    with internal("keras.src.backend.common.global_state 'global_seed_generator'"):
        keras.random.normal((2,))  # an unseeded call creates the global generator
        gen = ki.global_seed_generator()
        assert isinstance(gen, keras.random.SeedGenerator)
        before = np.asarray(gen.state.value).copy()
        keras.random.normal((2,))
        assert not np.array_equal(before, np.asarray(gen.state.value))


def test_keras_version():
    assert ki.KERAS_VERSION == keras.__version__
    major, minor = (int(p) for p in keras.__version__.split(".")[:2])
    assert (major, minor) >= (3, 13)


def test_print_msg_prints_like_keras_callbacks(capsys):
    with internal("keras.src.utils.io_utils.print_msg"):
        ki.print_msg("hello from resumable_scheduler")
        assert "hello from resumable_scheduler" in capsys.readouterr().out


def test_set_initial_epoch_moves_the_running_fit():
    with internal("Trainer._initial_epoch, read by fit() after on_train_begin"):
        epochs = []

        class Jump(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                ki.set_initial_epoch(self.model, 3)

            def on_epoch_begin(self, epoch, logs=None):
                epochs.append(epoch)

        model = tiny_model()
        model.fit(np.ones((5, 20), "float32"), np.zeros((5, 10), "float32"), epochs=5,
                  verbose=0, callbacks=[Jump()])
        assert epochs == [3, 4]


def test_epoch_iterator_class():
    with internal("keras.src.trainers.epoch_iterator.EpochIterator._enumerate_iterator"):
        cls = ki.epoch_iterator_class()
        assert cls.__name__ == "EpochIterator"
        assert callable(getattr(cls, "_enumerate_iterator", None))
        # It yields (begin_step, end_step, iterator); data.py consumes skipped
        # batches with next(iterator) and passes the rest through.
        it = cls(x=np.arange(10, dtype="float32").reshape(5, 2), batch_size=2, shuffle=False)
        seen = []
        for begin, end, iterator in it._enumerate_iterator():
            assert end == begin  # steps_per_execution=1
            batch = keras.tree.flatten(next(iterator))[0]
            seen.append((begin, np.asarray(batch)[:, 0].tolist()))
        assert seen == [(0, [0.0, 2.0]), (1, [4.0, 6.0]), (2, [8.0])]


def test_resumable_adapter_classes_are_what_fit_uses():
    with internal("keras.src.trainers.data_adapters ArrayDataAdapter / PyDatasetAdapter"):
        array_cls, pydataset_cls = ki.resumable_adapter_classes()
        cls = ki.epoch_iterator_class()
        assert isinstance(cls(x=np.ones((5, 2), "float32"), batch_size=2).data_adapter, array_cls)

        class Data(keras.utils.PyDataset):
            def __len__(self):
                return 2

            def __getitem__(self, i):
                return np.ones((2, 2), "float32"), np.zeros((2, 1), "float32")

        assert isinstance(cls(x=Data()).data_adapter, pydataset_cls)


def test_model_config_and_assets_are_what_stock_orbax_saves():
    from keras.src.saving import saving_lib

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with internal("saving_lib._serialize_model_as_json / _save_assets_to_dict"):
        config = ki.model_config_json(model)
        assert isinstance(config, str)
        rebuilt = saving_lib._model_from_config(config, custom_objects=None, compile=False, safe_mode=True)
        assert [tuple(w.shape) for w in rebuilt.weights] == [(3, 2), (2,)]
        assert ki.model_assets(model) is None


def test_callbacks_and_the_epoch_iterator_run_inside_fit():
    model = tiny_model()
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen["epoch_begin"] = ki.in_fit_of(self._model)
            seen["other_model"] = ki.in_fit_of(tiny_model())

        def on_train_batch_end(self, batch, logs=None):
            seen["batch_end"] = ki.in_fit_of(self._model)

    with internal("callbacks run inside the frame of Model.fit (self=model)"):
        model.fit(np.zeros((4, 20)), np.zeros((4, 10)), epochs=1, verbose=0, callbacks=[Probe()])
        assert seen == {"epoch_begin": True, "other_model": False, "batch_end": True}
    assert not ki.in_fit_of(model)


def test_fit_keeps_its_callback_list_in_a_local():
    model = tiny_model()
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen["ours"] = ki.in_fit_with(self._model, self)
            seen["stranger"] = ki.in_fit_with(self._model, keras.callbacks.Callback())
            seen["listed"] = any(c is self for c in ki.running_fit_callbacks(self._model))
            seen["list_object"] = self in ki.running_fit_callback_list(self._model).callbacks

    with internal("Model.fit keeps its CallbackList in the local variable `callbacks`"):
        model.fit(np.zeros((4, 20)), np.zeros((4, 10)), epochs=1, verbose=0, callbacks=[Probe()])
        assert seen == {"ours": True, "stranger": False, "listed": True, "list_object": True}
    assert ki.running_fit_callbacks(model) is None


def test_fit_keeps_its_training_epoch_iterator_in_a_local():
    model = tiny_model()
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen["epoch_begin"] = ki.running_epoch_iterator(self._model)

        def on_train_batch_end(self, batch, logs=None):
            seen["batch_end"] = ki.running_epoch_iterator(self._model)

    original = ki.epoch_iterator_class()._enumerate_iterator
    enumerated = []

    def spy(it):
        enumerated.append((it, ki.running_epoch_iterator(model)))
        return original(it)

    with internal("Model.fit keeps its training EpochIterator in the local variable `epoch_iterator`"):
        cls = ki.epoch_iterator_class()
        cls._enumerate_iterator = spy
        try:
            x, y = np.zeros((4, 20), "float32"), np.zeros((4, 10), "float32")
            model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y), callbacks=[Probe()])
        finally:
            cls._enumerate_iterator = original
        it = seen["epoch_begin"]
        assert isinstance(it, cls) and seen["batch_end"] is it
        # The training epoch is enumerated from the fit's own iterator; the
        # validation pass inside the fit uses another one.
        assert all(running is it for _, running in enumerated)
        assert any(e is it for e, _ in enumerated)
        assert any(e is not it for e, _ in enumerated)
    assert ki.running_epoch_iterator(model) is None


def test_epoch_input_reads_what_a_position_depends_on():
    cls = ki.epoch_iterator_class()

    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.ones((2, 2), "float32"), np.zeros((2, 1), "float32")

    with internal("EpochIterator.data_adapter / num_batches / steps_per_epoch / steps_per_execution, "
                  "ArrayDataAdapter._num_samples / _batch_size, PyDatasetAdapter.num_batches"):
        x = np.ones((10, 2), "float32")
        assert ki.epoch_input(cls(x=x, batch_size=4)) == {
            "adapter": "ArrayDataAdapter", "samples": 10, "batch_size": 4, "batches": 3, "steps": 3,
            "steps_per_epoch": None, "steps_per_execution": 1,
        }
        assert ki.epoch_input(cls(x=x, batch_size=2, steps_per_epoch=3, steps_per_execution=1)) == {
            "adapter": "ArrayDataAdapter", "samples": 10, "batch_size": 2, "batches": 5, "steps": 3,
            "steps_per_epoch": 3, "steps_per_execution": 1,
        }
        assert ki.epoch_input(cls(x=Data())) == {
            "adapter": "PyDatasetAdapter", "batches": 7, "steps": 7,
            "steps_per_epoch": None, "steps_per_execution": 1,
        }
