"""Shared pieces for resume tests: the documented model, schedule and data."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

import resumable_scheduler as rs

# The documented inputs (arange(100)) make SGD diverge: weights reach 1e28
# full-batch and NaN with batch_size=1, so "bitwise equal" would compare NaNs.
# Dividing by 100 keeps them finite; the learning rates do not depend on it.
X = np.arange(100, dtype="float32").reshape(5, 20) / 100
Y = np.zeros((5, 10), dtype="float32")
EPOCHS = 15
FINAL_LR = 0.01 * np.exp(-0.5)


def documented_schedule(epoch: int, lr: float) -> Any:
    """The schedule from the Keras docs, returning a JAX array after epoch 10."""
    if epoch < 10:
        return lr
    return lr * ops.exp(-0.1)


def make_model(seed: int = 0, dropout: bool = False) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((20,))]
    if dropout:
        layers.append(keras.layers.Dropout(0.3))
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


class InterruptAt(keras.callbacks.Callback):
    """Raises at the start of batch `batch` of epoch `epoch` (once)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.at == (epoch, 0) and self.at[1] == 0:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt(f"interrupted at epoch {self.epoch} batch {batch}")


class BatchLog(keras.callbacks.Callback):
    """Records (epoch, batch, lr) for every trained batch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, int]] = []
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.rows.append((self.epoch, batch))


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.weights]


def outcome(model: keras.Model) -> dict[str, Any]:
    return {
        "lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
        "iterations": int(ops.convert_to_numpy(model.optimizer.iterations)),
        "weights": weights(model),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["lr"] == b["lr"]
    assert a["iterations"] == b["iterations"]
    assert len(a["weights"]) == len(b["weights"])
    for x, y in zip(a["weights"], b["weights"]):
        assert np.isfinite(x).all()
        assert np.array_equal(x, y)


def fit(model, callbacks, batch_size=1, shuffle=True, x=X, y=Y, epochs=EPOCHS):
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                     callbacks=callbacks, verbose=0)


def run_uninterrupted(shuffle=True, dropout=False, **kw) -> dict[str, Any]:
    model = make_model(dropout=dropout)
    fit(model, [rs.LearningRateScheduler(documented_schedule)], shuffle=shuffle, **kw)
    return outcome(model)
