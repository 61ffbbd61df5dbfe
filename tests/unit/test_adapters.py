"""Pins every private Keras internal that resumable_scheduler relies on.

All of them are used through `src/resumable_scheduler/_adapters/keras.py`.
When a Keras upgrade changes one, the test below that covers it fails with a
message naming the internal, instead of training silently going wrong.
"""

import importlib
import inspect

import h5py
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler._adapters import keras as ki
from resumable_scheduler import tracker as tracker_mod
from tests.support import pins  # noqa: E402

# Every public name of _adapters.keras, and the test that pins it.
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
    "record_weights": "test_recorded_weights_write_the_bytes_save_weights_writes",
    "write_weights": "test_recorded_weights_write_the_bytes_save_weights_writes",
    "on_callback_exception": "test_a_callback_exception_passes_through_the_fit_callback_list",
    "model_of": "test_pin_callback_model_attribute",
    "set_monitor_op": "test_pin_monitor_callback_helpers",
    "is_improvement": "test_pin_monitor_callback_helpers",
    "reset_plateau": "test_pin_reduce_lr_on_plateau_reset",
    "learning_rate_slot": "test_pin_optimizer_learning_rate_slot_and_error",
    "clear_initial_epoch_of": "test_pin_initial_epoch_is_an_instance_attribute",
}


def internal(what):
    return pins.internal(what, "keras.py")


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
        f"_adapters.keras exposes {unpinned} without a test in tests/unit/test_adapters.py; "
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


# -- private names used outside the _adapters package ---------------------------------
#
# Outside `resumable_scheduler._adapters`, src/ may use a private name that
# Keras's callbacks, model or optimizer also define only where it is ours
# (an attribute of our own objects, or a Keras hook our subclass overrides).
# Each is listed here with why, or with the test that pins the hook.
# `test_every_private_name_outside_the_adapters_is_listed` scans src/ and
# fails on any other.

PRIVATE_OUTSIDE = {
    # A Keras hook that our subclass overrides (its signature is pinned):
    "_reduce_optimizer_lr": "test_pin_reduce_lr_on_plateau_reduce_hook",
    # Keras's names that we offer or keep on our own objects:
    "_async_futures": "test_pin_stock_orbax_readers_are_overridden",
    "_current_epoch": "ours: rs.BackupAndRestore offers it, as Keras's own tests read it (tests/keras_contract)",
    # Same spelling as a Keras private, but an attribute of our own objects:
    "_iterations": "ours: RunStateMixin._iterations(), not the optimizer's `_iterations`",
    "_lock": "ours: rs.BackupAndRestore's directory lock",
    "_path": "ours: storage.backup_dir's checkpoint path",
}
#: Private names of Orbax and CPython, used only inside _adapters, and their pins.
PRIVATE_ELSEWHERE = {
    "_CHECKPOINT_METADATA": "test_pin_orbax_step_metadata_and_tmp_suffix",
    ".orbax-checkpoint-tmp": "test_pin_orbax_step_metadata_and_tmp_suffix",
    "threading._register_atexit": "test_pin_threading_register_atexit",
}


def _src_files():
    import pathlib

    src = pathlib.Path(rs.__file__).resolve().parent
    outside = [p for p in src.rglob("*.py") if "_adapters" not in p.relative_to(src).parts]
    inside = list((src / "_adapters").glob("*.py"))
    return outside, inside


def _src_private_names():
    import re

    outside, _ = _src_files()
    used = {}
    for path in outside:
        for m in re.finditer(r'(?:\.|["\'])(_[A-Za-z][A-Za-z0-9_]*)\b', path.read_text()):
            used.setdefault(m.group(1), set()).add(path.name)
    return used


def _keras_defined_names(tmp_path):
    model = tiny_model()
    model.fit(np.ones((2, 20), "float32"), np.zeros((2, 10), "float32"), verbose=0)
    objects = [
        keras.callbacks.Callback(), keras.callbacks.EarlyStopping(), keras.callbacks.ReduceLROnPlateau(),
        keras.callbacks.LearningRateScheduler(lambda epoch: 0.1),
        keras.callbacks.BackupAndRestore(str(tmp_path / "b")), keras.callbacks.OrbaxCheckpoint(str(tmp_path / "o")),
        model, model.optimizer,
    ]
    names = set()
    for obj in objects:
        names |= set(dir(obj))
    return names


def test_every_private_name_outside_the_adapters_is_listed(tmp_path):
    import re

    used = _src_private_names()
    keras_names = _keras_defined_names(tmp_path)
    unlisted = {n: sorted(f) for n, f in used.items() if n in keras_names and n not in PRIVATE_OUTSIDE}
    assert not unlisted, (
        f"src/ uses private names that Keras also defines, outside resumable_scheduler._adapters: "
        f"{unlisted}. Move the use into the _adapters package, or list it in PRIVATE_OUTSIDE with a pin."
    )
    outside, inside = _src_files()
    text = "\n".join(p.read_text() for p in outside)
    adapters = "\n".join(p.read_text() for p in inside)
    imports = re.findall(r"^\s*(?:from|import)\s+((?:keras\.src|orbax\.checkpoint\._src)\S*)", text, re.M)
    assert not imports, f"import private modules only in resumable_scheduler._adapters: {imports}"
    for name in PRIVATE_ELSEWHERE:
        short = name.split(".")[-1] if name.startswith("threading.") else name
        assert short not in text, f"{name} is used outside resumable_scheduler._adapters"
        assert short in adapters, f"{name} is no longer used: drop it from PRIVATE_ELSEWHERE"
    tests = {name for name in globals() if name.startswith("test_")}
    for why in [*PRIVATE_OUTSIDE.values(), *PRIVATE_ELSEWHERE.values()]:
        assert why.startswith("ours:") or why in tests, why


def test_pin_callback_model_attribute():
    with internal("keras.callbacks.Callback keeps the model in `_model`; `.model` syncs JAX state"):
        model = tiny_model()
        cb = keras.callbacks.Callback()
        cb.set_model(model)
        assert cb._model is model and cb.model is model
        assert ki.model_of(cb) is model and ki.model_of(keras.callbacks.Callback()) is None
        assert isinstance(inspect.getattr_static(keras.callbacks.Callback, "model"), property)


def test_pin_monitor_callback_helpers():
    from keras.src.callbacks.monitor_callback import MonitorCallback

    with internal("MonitorCallback._set_monitor_op / _is_improvement / monitor_op / best"):
        for cls in (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau, keras.callbacks.OrbaxCheckpoint):
            assert issubclass(cls, MonitorCallback), cls
        cb = keras.callbacks.EarlyStopping(monitor="loss", mode="min", min_delta=0.5)
        assert cb.monitor_op is None
        cb._set_monitor_op()
        assert cb.monitor_op is not None
        assert cb._is_improvement(1.0, None)  # no best yet: any value improves
        assert cb._is_improvement(1.0, 2.0) and not cb._is_improvement(1.8, 2.0)  # min_delta
        up = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max")
        ki.set_monitor_op(up)
        assert ki.is_improvement(up, 0.9, 0.5) and not ki.is_improvement(up, 0.4, 0.5)
        # rs.OrbaxCheckpoint runs MonitorCallback.__init__ only (skipping the
        # stock __init__, which opens a checkpointer): its signature.
        params = list(inspect.signature(MonitorCallback.__init__).parameters)
        assert params[:4] == ["self", "monitor", "mode", "baseline"]
        assert keras.callbacks.OrbaxCheckpoint.__mro__[1] is MonitorCallback
        o = rs.OrbaxCheckpoint("unused_dir", monitor="loss", mode="max", initial_value_threshold=3.0)
        assert (o.monitor, o.mode, o.best) == ("loss", "max", 3.0)


def test_pin_reduce_lr_on_plateau_reset():
    with internal("keras.callbacks.ReduceLROnPlateau._reset (best, cooldown_counter, wait)"):
        cb = keras.callbacks.ReduceLROnPlateau()
        cb.best, cb.cooldown_counter, cb.wait = 0.5, 2, 3
        cb._reset()
        assert (cb.best, cb.cooldown_counter, cb.wait) == (None, 0, 0)
        cb.best, cb.cooldown_counter, cb.wait = 0.5, 2, 3
        ki.reset_plateau(cb)
        assert (cb.best, cb.cooldown_counter, cb.wait) == (None, 0, 0)


def test_pin_reduce_lr_on_plateau_reduce_hook():
    # rs.ReduceLROnPlateau runs Keras's own on_epoch_end and overrides the
    # hook it calls for each optimizer's reduction.
    calls = []

    class Probe(keras.callbacks.ReduceLROnPlateau):
        def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
            calls.append((epoch, name))
            return True

    with internal("keras.callbacks.ReduceLROnPlateau._reduce_optimizer_lr(optimizer, epoch, name)"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(), loss="mse")
        cb = Probe(monitor="loss", patience=1, min_delta=1e9)
        cb.set_model(model)
        cb.on_train_begin()
        cb.on_epoch_end(0, {"loss": 1.0})
        cb.on_epoch_end(1, {"loss": 1.0})
        assert calls == [(1, "")]
        assert cb.cooldown_counter == cb.cooldown and cb.wait == 0


def test_pin_optimizer_learning_rate_slot_and_error():
    from resumable_scheduler import lr_access

    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    opt = keras.optimizers.SGD(schedule)
    with internal("BaseOptimizer._learning_rate holds the schedule; its setter's TypeError text"):
        assert opt._learning_rate is schedule and ki.learning_rate_slot(opt) is schedule
        with pytest.raises(TypeError) as stock:
            opt.learning_rate = 0.1
        assert str(stock.value) == lr_access.KERAS_SCHEDULE_NOT_SETTABLE
    with pytest.raises(TypeError) as ours:
        lr_access.set_rate(opt, 0.1)
    assert str(ours.value).startswith(lr_access.KERAS_SCHEDULE_NOT_SETTABLE + " ")
    assert "ExponentialDecay" in str(ours.value) and "rs.StepSchedule" in str(ours.value)


def test_pin_initial_epoch_is_an_instance_attribute():
    with internal("Trainer._initial_epoch: an instance attribute that fit() reads and never resets"):
        model = tiny_model()
        epochs = []

        class Probe(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if not epochs:
                    self._model._initial_epoch = 1  # what rs callbacks do (_resume.py)

            def on_epoch_begin(self, epoch, logs=None):
                epochs.append(epoch)

        x, y = np.ones((2, 20), "float32"), np.zeros((2, 10), "float32")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[Probe()])
        assert epochs == [1] and model.__dict__.get("_initial_epoch") == 1
        # Left set, it moves the next fit too: why _resume.py clears its own.
        model.fit(x, y, epochs=2, verbose=0, callbacks=[Probe()])
        assert epochs == [1, 1]
    owner = object()
    ki.set_initial_epoch(model, 1, owner=owner)
    ki.clear_initial_epoch_of(model, object())  # not the owner: kept
    assert model.__dict__.get("_initial_epoch") == 1
    ki.clear_initial_epoch_of(model, owner)
    assert model.__dict__.get("_initial_epoch") is None


def test_pin_stock_orbax_readers_are_overridden():
    with internal("keras.callbacks.OrbaxCheckpoint's uses of `_async_futures` / `checkpointer`"):
        stock = keras.callbacks.OrbaxCheckpoint
        readers = [
            name for name, fn in vars(stock).items()
            if inspect.isfunction(fn) and "_async_futures" in inspect.getsource(fn) and name != "__init__"
        ]
        assert readers
        for name in readers:  # ours keeps its own list: every stock reader is replaced
            assert getattr(rs.OrbaxCheckpoint, name) is not getattr(stock, name), name
        params = list(inspect.signature(stock._save_checkpoint).parameters)
        assert params == list(inspect.signature(rs.OrbaxCheckpoint._save_checkpoint).parameters) == ["self", "step", "logs"]


def test_pin_orbax_step_metadata_and_tmp_suffix(tmp_path):
    import os

    from resumable_scheduler._adapters import orbax as orbax_names
    from resumable_scheduler.storage import orbax_dir

    with internal("orbax-checkpoint: step metadata file name and temporary-folder suffix"):
        from orbax.checkpoint._src.metadata import checkpoint as ocp_metadata
        from orbax.checkpoint._src.path import atomicity_types

        assert ocp_metadata._STEP_METADATA_FILENAME == orbax_names.STEP_METADATA == orbax_dir.STEP_METADATA
        assert atomicity_types.TMP_DIR_SUFFIX == orbax_names.TMP_SUFFIX == orbax_dir.TMP_SUFFIX
        cb = rs.OrbaxCheckpoint(tmp_path, save_on_background=False)
        cb.set_model(tiny_model())
        cb._save_checkpoint(3)
        cb.checkpointer.close()
        assert os.path.isfile(tmp_path / "3" / orbax_dir.STEP_METADATA)
        assert orbax_dir.is_step_dir(str(tmp_path / "3")) and orbax_dir.complete_steps(str(tmp_path)) == [3]


def test_pin_threading_register_atexit():
    import concurrent.futures.thread  # noqa: F401 - registers its own hook first
    import threading

    with internal("CPython threading._register_atexit (runs before thread pools shut down)"):
        assert callable(threading._register_atexit)
        from resumable_scheduler._adapters import runtime

        before = len(threading._threading_atexits)
        runtime.register_before_thread_pools_shut_down(lambda: None)
        assert len(threading._threading_atexits) == before + 1
        threading._threading_atexits.pop()
        assert any(
            getattr(getattr(f, "func", None), "__module__", "") == "concurrent.futures.thread"
            for f in threading._threading_atexits
        )


def test_recorded_weights_write_the_bytes_save_weights_writes():
    """Background saves: `_save_state` accepts a recording `H5IOStore`,
    every saveable writes only through `make` and item assignment, and
    replaying the records through `H5IOStore` gives `save_weights`'s bytes,
    however the variables change after the recording."""
    import io

    from resumable_scheduler.storage.background import host_copy

    with internal("keras.src.saving.saving_lib._save_state / H5IOStore(make, __setitem__, close)"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((20,)), keras.layers.Dropout(0.2), keras.layers.Dense(10),
            keras.layers.BatchNormalization(),
        ])
        model.compile(keras.optimizers.Adam(), loss="mse", metrics=["mae"])
        x, y = np.ones((8, 20), "float32"), np.zeros((8, 10), "float32")
        model.fit(x, y, verbose=0, callbacks=[rs.LearningRateScheduler(lambda e, lr: lr)])
        # The same timeline in both (each save otherwise counts itself in it).
        tracker = tracker_mod.tracker_for(model)
        tracker.extra = ({"timeline": tracker.timeline.to_json()}, {})
        direct = _NamedBuffer()
        model.save_weights(direct)
        records = ki.record_weights(model, host_copy)
        tracker.extra = None
        before = [np.array(v) for v in model.weights]
        model.fit(x, y, verbose=0)  # training goes on after the recording
        assert any(not np.array_equal(a, np.array(v)) for a, v in zip(before, model.weights))
        replayed = io.BytesIO()
        ki.write_weights(records, replayed)
        assert replayed.getvalue() == direct.getvalue()
        with h5py.File(io.BytesIO(replayed.getvalue()), "r") as f:
            assert tracker_mod.ATTR in f and "vars" in f["layers/dense"]


class _NamedBuffer(__import__("io").BytesIO):
    """An in-memory file whose name `save_weights` accepts."""

    def __str__(self):
        return "model.weights.h5"


@pytest.mark.parametrize("hook", ["on_train_batch_begin", "on_train_batch_end", "on_epoch_begin", "on_epoch_end",
                                  "on_test_batch_begin", "on_train_end"])
def test_a_callback_exception_passes_through_the_fit_callback_list(hook):
    """Background saves flush when any callback raises: `fit` calls every
    hook through the `CallbackList` in its local `callbacks`, so a wrapper
    set on that instance in `on_train_begin` sees the exception first."""
    seen = []

    class Install(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            import weakref

            self.installed = ki.on_callback_exception(self.model, lambda: seen.append(hook))
            self.callback_list = weakref.ref(ki.running_fit_callback_list(self.model))

    class Boom(keras.callbacks.Callback):
        pass

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt(hook)

    setattr(Boom, hook, boom)
    with internal("Model.fit calls callbacks through its local CallbackList `callbacks` (instance attributes win)"):
        model = tiny_model()
        install = Install()
        x, y = np.ones((4, 20), "float32"), np.zeros((4, 10), "float32")
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, y, batch_size=2, epochs=2, validation_data=(x, y), callbacks=[install, Boom()], verbose=0)
        assert install.installed and seen == [hook]
        # The fit's CallbackList is freed with its exception (at once, or at
        # the next garbage collection where Keras's evaluate path keeps a
        # reference cycle: exceptions raised during validation).
        if install.callback_list() is not None:
            import gc

            gc.collect()
        assert install.callback_list() is None
        assert ki.on_callback_exception(model, lambda: None) is False  # outside fit
