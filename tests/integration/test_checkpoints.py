"""The scheduler's state rides inside the checkpoints Keras users already
write: stock BackupAndRestore, ModelCheckpoint (.keras and .weights.h5),
model.save / model.save_weights. Every resume is compared with the
uninterrupted run: the final rate, the iterations and the weights, bit for
bit.

The batches are not shuffled: stock checkpoints do not hold the NumPy RNG
that `fit` shuffles with (exact resume with shuffling is rs.BackupAndRestore's
job).
"""

import math
import os

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import demo

FINAL_LR = 0.01 * math.exp(-0.5)


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises at the start of `epoch`, before any of its batches runs."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt(f"interrupted at epoch {epoch}")


def fit(model, callbacks, epochs=demo.EPOCHS, initial_epoch=0):
    x, y = demo.data()
    model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=demo.BATCH_SIZE,
              shuffle=False, callbacks=callbacks, verbose=0)


def lr_of(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


@pytest.fixture(scope="module")
def reference():
    model = demo.train(backup_dir=None)
    weights = model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)  # so equality means something
    return {"lr": lr_of(model), "iterations": int(model.optimizer.iterations), "weights": weights}


def assert_same_as_reference(model, reference):
    lr = lr_of(model)
    assert round(lr, 5) == 0.00607
    assert np.isclose(lr, FINAL_LR, rtol=1e-6)
    assert lr == reference["lr"]
    assert int(model.optimizer.iterations) == reference["iterations"] == 75
    weights = model.get_weights()
    assert len(weights) == len(reference["weights"])
    for w_ref, w in zip(reference["weights"], weights):
        assert w.dtype == w_ref.dtype
        assert np.array_equal(w, w_ref)


def test_reference_run(reference):
    assert round(reference["lr"], 5) == 0.00607
    assert reference["iterations"] == 75


# -- stock keras.callbacks.BackupAndRestore ----------------------------------


@pytest.mark.parametrize("epoch", range(15))
def test_stock_backup_and_restore_exception_at_each_epoch(tmp_path, reference, epoch):
    backup = str(tmp_path / "backup")
    model = demo.build_model()
    with pytest.raises(Interrupt):
        fit(model, [keras.callbacks.BackupAndRestore(backup, save_freq="epoch"), rs.LearningRateScheduler(demo.schedule), InterruptAt(epoch)])
    if epoch > 0:
        saved = rs.read_state(backup)
        assert (saved["epoch"], saved["batch"], saved["step"]) == (epoch, 0, 5 * epoch)
        assert len(saved["history"]) == epoch

    # A new process would build everything again: so do we.
    model = demo.build_model()
    callback = rs.LearningRateScheduler(demo.schedule)
    fit(model, [keras.callbacks.BackupAndRestore(backup, save_freq="epoch"), callback])
    assert_same_as_reference(model, reference)
    assert callback.state.history == pytest.approx([0.01] * 10 + [0.01 * math.exp(-0.1 * k) for k in range(1, 6)])


def test_sigkilled_child_resumes_with_stock_backup_and_restore(tmp_path):
    # Stock keras.callbacks.BackupAndRestore(save_freq="epoch"), no shuffling,
    # the child SIGKILLed between epochs (it waits there for the parent).
    result = demo.run_demo(seed=5, kills=2, workdir=str(tmp_path), out=None, backup="stock")
    assert len(result["killed_after"]) == 2
    assert result["checkpoints"] == [(e, 0) for e in result["killed_after"]]
    assert result["runs"] == 3
    assert round(result["resumed"]["learning_rate"], 5) == 0.00607
    assert result["resumed"]["iterations"] == result["reference"]["iterations"] == 75
    assert result["resumed"]["learning_rate"] == result["reference"]["learning_rate"]
    assert result["weights_equal"] is True
    assert result["ok"] is True


# -- ModelCheckpoint, then load, a fresh compile and rs.restore -----------------


@pytest.mark.parametrize("fmt", ["keras", "weights.h5"])
@pytest.mark.parametrize("order", ["checkpoint_first", "scheduler_first"])
def test_model_checkpoint_load_fresh_compile_restore(tmp_path, reference, fmt, order):
    weights_only = fmt == "weights.h5"
    pattern = str(tmp_path / ("e{epoch:02d}." + fmt))
    checkpoint = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=weights_only)
    scheduler = rs.LearningRateScheduler(demo.schedule)
    callbacks = [checkpoint, scheduler] if order == "checkpoint_first" else [scheduler, checkpoint]
    with pytest.raises(Interrupt):
        fit(demo.build_model(), callbacks + [InterruptAt(12)])

    # Whatever the order, each file's state says its epoch had finished.
    for e in range(1, 13):
        saved = rs.read_state(str(tmp_path / f"e{e:02d}.{fmt}"))
        assert (saved["epoch"], saved["batch"], saved["step"]) == (e, 0, 5 * e)
        assert len(saved["history"]) == e

    path = str(tmp_path / f"e12.{fmt}")
    if weights_only:
        model = demo.build_model()
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
    else:
        model = keras.models.load_model(path)
    # A fresh optimizer: stock Keras would start again at 0.01 (FINDINGS row 5).
    model.compile(keras.optimizers.SGD(), loss="mse")
    assert lr_of(model) == pytest.approx(0.01)
    callback = rs.LearningRateScheduler(demo.schedule)
    initial_epoch = rs.restore(path, callback)
    assert initial_epoch == 12
    fit(model, [callback], initial_epoch=initial_epoch)
    assert_same_as_reference(model, reference)


def test_stock_scheduler_after_fresh_compile_ends_at_0_007408(tmp_path):
    # FINDINGS row 5, the stock behaviour the README quotes.
    path = str(tmp_path / "e12.keras")
    model = demo.build_model()
    stock = keras.callbacks.LearningRateScheduler(lambda e, lr: lr if e < 10 else lr * math.exp(-0.1))
    fit(model, [stock], epochs=12)
    model.save(path)
    model = keras.models.load_model(path)
    model.compile(keras.optimizers.SGD(), loss="mse")
    fit(model, [stock], initial_epoch=12)
    assert round(lr_of(model), 6) == 0.007408


# -- model.save / model.save_weights directly ----------------------------------


def _train_12_and_save(tmp_path):
    model = demo.build_model()
    fit(model, [rs.LearningRateScheduler(demo.schedule)], epochs=12)
    keras_path = str(tmp_path / "m.keras")
    h5_path = str(tmp_path / "m.weights.h5")
    model.save(keras_path)
    model.save_weights(h5_path)
    return model, keras_path, h5_path


@pytest.mark.parametrize("use", ["keras", "weights.h5"])
def test_model_save_and_save_weights_carry_the_state(tmp_path, reference, use):
    _, keras_path, h5_path = _train_12_and_save(tmp_path)
    path = keras_path if use == "keras" else h5_path
    saved = rs.read_state(path)
    assert (saved["epoch"], saved["batch"], saved["step"]) == (12, 0, 60)
    assert saved["learning_rate"] == pytest.approx(0.01 * math.exp(-0.2))
    assert saved["initial_learning_rate"] == pytest.approx(0.01)
    assert list(saved["callbacks"]) == ["LearningRateScheduler"]

    model = demo.build_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(h5_path)
    callback = rs.LearningRateScheduler(demo.schedule)
    fit(model, [callback], initial_epoch=rs.restore(path, callback))
    assert_same_as_reference(model, reference)


def test_plain_keras_loads_our_checkpoints(tmp_path):
    trained, keras_path, h5_path = _train_12_and_save(tmp_path)
    x, _ = demo.data()
    expected = trained.predict(x, verbose=0)

    loaded = keras.models.load_model(keras_path)  # no callback, no rs involved
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert int(loaded.optimizer.iterations) == 60
    assert lr_of(loaded) == pytest.approx(0.01 * math.exp(-0.2))

    plain = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    plain.compile(keras.optimizers.SGD(), loss="mse")
    plain.optimizer.build(plain.trainable_variables)
    plain.load_weights(h5_path)
    for w_saved, w in zip(trained.get_weights(), plain.get_weights()):
        assert np.array_equal(w_saved, w)
    assert int(plain.optimizer.iterations) == 60


def test_read_state_and_restore_report_a_checkpoint_without_state(tmp_path):
    model = demo.build_model()
    fit(model, [], epochs=1)
    path = str(tmp_path / "plain.keras")
    model.save(path)
    with pytest.raises(ValueError, match="No resumable_scheduler state in"):
        rs.read_state(path)
    with pytest.warns(UserWarning, match="No resumable_scheduler state found in"):
        assert rs.restore(path, rs.LearningRateScheduler(demo.schedule)) == 0


def test_restore_rejects_a_non_resumable_argument(tmp_path):
    _, keras_path, _ = _train_12_and_save(tmp_path)
    with pytest.raises(TypeError, match=r"Invalid value for argument `callbacks\[0\]`"):
        rs.restore(keras_path, keras.callbacks.EarlyStopping())


def test_read_state_on_a_missing_path_names_it(tmp_path):
    missing = os.path.join(str(tmp_path), "nope.keras")
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        rs.read_state(missing)
