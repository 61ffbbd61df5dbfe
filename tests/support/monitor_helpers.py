"""Shared pieces for the ReduceLROnPlateau / EarlyStopping resume tests.

A run is interrupted at the start of an epoch, then resumed the way a new
process would: a fresh model and fresh callbacks, then one of the resume
paths a Keras user has (`MECHANISMS`). The per-epoch logs of the interrupted
part and the resumed part are joined and compared with an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

import resumable_scheduler as rs

# A noisy linear regression: the loss drops fast, then creeps down by less
# and less, so a plateau callback reduces the rate many times.
_rng = np.random.default_rng(0)
X = _rng.normal(size=(64, 4)).astype("float32")
Y = (X @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32") + 0.3 * _rng.normal(size=(64, 1))).astype("float32")
BATCH_SIZE = 16
EPOCHS = 16

#: Resume paths. Stock checkpoints do not hold the NumPy RNG that `fit`
#: shuffles with, so only rs.BackupAndRestore runs with shuffling.
MECHANISMS = ["rs_backup", "stock_backup", "keras_file", "weights_file", "keras_file_recompile"]


class Interrupted(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises at the start of `epoch`, before any of its batches runs."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted(f"interrupted at epoch {epoch}")


def make_model(lr: float = 0.2, optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer if optimizer is not None else keras.optimizers.SGD(lr), loss="mse")
    return model


def _fit(model, callbacks, shuffle, initial_epoch=0, epochs=EPOCHS):
    return model.fit(X, Y, epochs=epochs, initial_epoch=initial_epoch, batch_size=BATCH_SIZE,
                     shuffle=shuffle, callbacks=callbacks, verbose=0)


def run(
    make_callbacks: Callable[[], list[Any]],
    tmp_path: Any = None,
    mechanism: str | None = None,
    interrupt_at: int | None = None,
    make: Callable[[], keras.Model] = make_model,
    epochs: int = EPOCHS,
) -> tuple[dict[str, list[float]], keras.Model, list[Any]]:
    """Returns (per-epoch logs, final model, callbacks of the last fit)."""
    shuffle = mechanism == "rs_backup"
    model = make()
    cbs = make_callbacks()
    if interrupt_at is None:
        h = _fit(model, cbs, shuffle, epochs=epochs)
        return dict(h.history), model, cbs

    d = os.fspath(tmp_path / "ckpt")
    pattern = os.path.join(d, "e{epoch:02d}" + (".weights.h5" if mechanism == "weights_file" else ".keras"))

    def saver():
        if mechanism == "rs_backup":
            return rs.BackupAndRestore(d)
        if mechanism == "stock_backup":
            return keras.callbacks.BackupAndRestore(d)
        return keras.callbacks.ModelCheckpoint(pattern, save_weights_only=mechanism == "weights_file")

    # rs.BackupAndRestore needs no particular order: put it first.
    first = [saver()] + cbs if mechanism == "rs_backup" else cbs + [saver()]
    with pytest.raises(Interrupted):
        _fit(model, first + [InterruptAt(interrupt_at)], shuffle, epochs=epochs)
    before = {k: list(v) for k, v in model.history.history.items()}

    # What a new process does.
    cbs = make_callbacks()
    initial_epoch = 0
    if mechanism in ("rs_backup", "stock_backup"):
        model = make()
        later = [saver()] + cbs if mechanism == "rs_backup" else cbs + [saver()]
        np.random.seed(12345)  # whatever the RNG is now, the backup decides
    else:
        path = pattern.format(epoch=interrupt_at)
        if mechanism == "weights_file":
            model = make()
            model.optimizer.build(model.trainable_variables)
            model.load_weights(path)
        else:
            model = keras.models.load_model(path)
            if mechanism == "keras_file_recompile":
                # A fresh optimizer (FINDINGS row 5): only the callbacks' states know the rate.
                model.compile(keras.optimizers.SGD(0.2), loss="mse")
        initial_epoch = rs.restore(path, *[c for c in cbs if isinstance(c, rs.Resumable)])
        assert initial_epoch == interrupt_at
        later = cbs
    h = _fit(model, later, shuffle, initial_epoch=initial_epoch, epochs=epochs)
    joined = {k: before.get(k, [])[:interrupt_at] + list(v) for k, v in h.history.items()}
    return joined, model, cbs


def assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert np.isfinite(x).all()
        assert np.array_equal(x, y)
