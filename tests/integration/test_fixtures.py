"""Committed checkpoints (fixtures/, see fixtures/make_fixtures.py) keep
loading: one written by stock Keras 3.15 without our state, one written by
resumable_scheduler with state format version 1. Never regenerated here."""

import io
import math
import os
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import demo

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures")
STOCK = os.path.join(ROOT, "stock_keras_3_15")
RS_V1 = os.path.join(ROOT, "rs_v1")
LR_AFTER_12 = 0.01 * math.exp(-0.2)  # the schedule decayed at epochs 10 and 11
GROUP = "_resumable_scheduler_state/vars/envelope"


def x_y():
    return demo.data()


def load(folder, kind):
    if kind == "keras":
        return keras.models.load_model(os.path.join(folder, "e12.keras"))
    model = demo.build_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(folder, "e12.weights.h5"))
    return model


def lr_of(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def h5_keys(path):
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as zf:
            data = zf.read("model.weights.h5")
        f = h5py.File(io.BytesIO(data), "r")
    else:
        f = h5py.File(path, "r")
    with f:
        keys = []
        f.visit(keys.append)
    return keys


@pytest.fixture(scope="module")
def reference_weights():
    return demo.train(backup_dir=None).get_weights()


JAX_REFERENCE = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the fixtures were written on JAX; the reference run must draw the same initial weights",
)


@pytest.mark.parametrize("name", ["e12.keras", "e12.weights.h5"])
@pytest.mark.parametrize("folder", [STOCK, RS_V1])
def test_fixture_files_are_present_and_small(folder, name):
    path = os.path.join(folder, name)
    assert os.path.isfile(path), f"missing fixture {path}: run fixtures/make_fixtures.py once and commit it"
    assert os.path.getsize(path) < 64 * 1024


@pytest.mark.parametrize("name", ["e12.keras", "e12.weights.h5"])
def test_stock_fixture_has_no_state_and_ours_has_it(name):
    assert GROUP not in h5_keys(os.path.join(STOCK, name))
    assert GROUP in h5_keys(os.path.join(RS_V1, name))


@JAX_REFERENCE
@pytest.mark.parametrize("kind", ["keras", "weights.h5"])
def test_stock_fixture_restores_with_exactly_one_warning(kind, reference_weights):
    model = load(STOCK, kind)
    assert lr_of(model) == pytest.approx(LR_AFTER_12)
    assert int(model.optimizer.iterations) == 60
    callback = rs.LearningRateScheduler(demo.schedule)
    path = os.path.join(STOCK, f"e12.{kind}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initial_epoch = rs.restore(path, callback)
    user = [w for w in caught if w.category is UserWarning]
    assert len(user) == 1, [str(w.message) for w in user]
    assert str(user[0].message).startswith(f"No resumable_scheduler state found in {path!r}")
    assert initial_epoch == 0  # no state: the caller knows the epoch (12) from the file name

    x, y = x_y()
    model.fit(x, y, epochs=15, initial_epoch=12, batch_size=1, shuffle=False, verbose=0, callbacks=[callback])
    history = callback.state.history
    # The scheduler started from the optimizer's (restored) rate ...
    assert callback.state.initial_learning_rate == pytest.approx(LR_AFTER_12)
    assert history[12] == pytest.approx(LR_AFTER_12 * math.exp(-0.1))
    # ... so the run ends where the uninterrupted one does.
    assert round(lr_of(model), 5) == 0.00607
    assert int(model.optimizer.iterations) == 75
    for w_ref, w in zip(reference_weights, model.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)


def test_stock_fixture_with_pytest_warns():
    callback = rs.LearningRateScheduler(demo.schedule)
    with pytest.warns(UserWarning, match="No resumable_scheduler state found in") as record:
        rs.restore(os.path.join(STOCK, "e12.keras"), callback)
    assert len([w for w in record if w.category is UserWarning]) == 1


def test_read_state_of_the_stock_fixture_says_there_is_none():
    path = os.path.join(STOCK, "e12.keras")
    with pytest.raises(ValueError, match="No resumable_scheduler state in .*e12.keras"):
        rs.read_state(path)


@pytest.mark.parametrize("name", ["e12.keras", "e12.weights.h5"])
def test_rs_v1_fixture_reads_back_exactly(name):
    state = rs.read_state(os.path.join(RS_V1, name))
    assert (state["version"], state["epoch"], state["batch"], state["step"]) == (1, 12, 0, 60)
    assert state["learning_rate"] == pytest.approx(LR_AFTER_12, rel=1e-7)
    assert state["initial_learning_rate"] == pytest.approx(0.01, rel=1e-7)
    expected = [0.01] * 10 + [0.01 * math.exp(-0.1), LR_AFTER_12]
    assert state["history"] == pytest.approx(expected, rel=1e-7)
    assert list(state["callbacks"]) == ["LearningRateScheduler"]


@JAX_REFERENCE
@pytest.mark.parametrize("kind", ["keras", "weights.h5"])
def test_rs_v1_fixture_resumes_after_a_fresh_compile(kind, reference_weights):
    model = load(RS_V1, kind)
    model.compile(keras.optimizers.SGD(), loss="mse")  # rate back at 0.01, iterations at 0
    callback = rs.LearningRateScheduler(demo.schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # our own state: no warning
        initial_epoch = rs.restore(os.path.join(RS_V1, f"e12.{kind}"), callback)
    assert initial_epoch == 12
    x, y = x_y()
    model.fit(x, y, epochs=15, initial_epoch=initial_epoch, batch_size=1, shuffle=False,
              verbose=0, callbacks=[callback])
    assert round(lr_of(model), 5) == 0.00607
    assert np.isclose(lr_of(model), 0.01 * math.exp(-0.5), rtol=1e-6)
    assert int(model.optimizer.iterations) == 75
    assert len(callback.state.history) == 15
    for w_ref, w in zip(reference_weights, model.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)


RS_V1_BACKUP = os.path.join(ROOT, "rs_v1_backup")


def test_rs_v1_backup_dir_is_readable():
    state = rs.read_state(RS_V1_BACKUP)
    assert (state["epoch"], state["batch"], state["step"]) == (12, 3, 63)
    assert state["learning_rate"] == pytest.approx(0.01 * math.exp(-0.3))


@JAX_REFERENCE
def test_rs_v1_backup_dir_resumes_mid_epoch_exactly(tmp_path):
    import shutil

    backup = os.fspath(tmp_path / "backup")
    shutil.copytree(RS_V1_BACKUP, backup)
    x, y = x_y()

    reference = demo.build_model()
    reference.fit(x, y, epochs=demo.EPOCHS, batch_size=demo.BATCH_SIZE, shuffle=True, verbose=0,
                  callbacks=[rs.LearningRateScheduler(demo.schedule)])

    model = demo.build_model()
    model.fit(x, y, epochs=demo.EPOCHS, batch_size=demo.BATCH_SIZE, shuffle=True, verbose=0,
              callbacks=[rs.BackupAndRestore(backup, save_freq=1), rs.LearningRateScheduler(demo.schedule)])
    assert int(model.optimizer.iterations) == 75
    assert round(lr_of(model), 5) == 0.00607 and lr_of(model) == lr_of(reference)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        assert np.array_equal(a, b)
