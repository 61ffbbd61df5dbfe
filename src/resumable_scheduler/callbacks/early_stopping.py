"""`rs.EarlyStopping`: Keras's callback, with state that survives restarts."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki
import numpy as np

from resumable_scheduler._adapters.keras import print_msg
from resumable_scheduler.callbacks._run_state import RunStateMixin
from resumable_scheduler.monitor_state import EarlyStoppingState

_ARRAY_KEY = re.compile(r"^best_weights\.(\d+)$")
#: Stands in for restored best weights that were not delivered, during
#: Keras's on_epoch_end (see `EarlyStopping.on_epoch_end`).
_LOST: list[Any] = []


class EarlyStopping(RunStateMixin, keras.callbacks.EarlyStopping):
    """Stop training when a monitored metric has stopped improving; resumable.

    Same arguments, decisions and messages as `keras.callbacks.EarlyStopping`.
    In addition its state (`wait`, `best`, `best_epoch`, `stopped_epoch`, the
    epochs seen, and the best weights when `restore_best_weights=True`) is
    saved with every checkpoint of the model and handed back by
    `rs.restore`, so a resumed run stops at the same epoch and restores the
    same weights as an uninterrupted one. Stock Keras resets that state in
    `on_train_begin`.

    Best weights: they are arrays, so they never go into the JSON state,
    which only counts them (`best_weights`). They travel beside it through
    `get_arrays()` / `set_arrays()`, which every checkpoint Keras writes
    carries (`.keras`, `.weights.h5`, stock and `rs.BackupAndRestore`, in
    the resumable-state group), and which `rs.restore` hands back. A
    checkpoint therefore holds the model's weights twice while
    `restore_best_weights=True`. If a restored state counts best weights
    that were not delivered, it warns and, at the end of training, keeps the
    final weights instead (as if no best weights had been recorded), unless
    a later epoch improves and records new ones.

    What resets and what persists: `on_train_begin` resets the state, as
    Keras does; at the first epoch, a state handed over by `set_state` (a
    restore) carries on, and so does the state of a `fit` continued with
    `initial_epoch > 0` in the same process; a `fit` starting at epoch 0
    without a restore is a new run and keeps the reset. `stopped_epoch` describes one `fit` and resets at every
    `fit`. A `fit` with no epoch left to run (resumed after the last
    epoch) still restores the best weights at its end. A checkpoint written
    after this callback stopped the run belongs to a finished run: Keras
    cannot end a `fit` before its first batch, so resuming from it trains
    on, as with the stock callback.

    Place it before `keras.callbacks.ModelCheckpoint` or stock
    `BackupAndRestore` in `callbacks`; it warns otherwise.
    `rs.BackupAndRestore` needs no particular order.

    Args:
        monitor: Quantity to be monitored. Defaults to `"val_loss"`.
        min_delta: Minimum change in the monitored quantity to qualify as an
            improvement. Defaults to `0`.
        patience: Number of epochs with no improvement after which training
            will be stopped. Defaults to `0`.
        verbose: Verbosity mode, 0 or 1. Defaults to `0`.
        mode: One of `{"auto", "min", "max"}`. Defaults to `"auto"`.
        baseline: Baseline value for the monitored quantity. Defaults to `None`.
        restore_best_weights: Whether to restore model weights from the epoch
            with the best value of the monitored quantity. Defaults to `False`.
        start_from_epoch: Number of epochs to wait before starting to monitor
            improvement. Defaults to `0`.

    Example:

    >>> callback = EarlyStopping(monitor='loss', patience=3)
    >>> model = keras.models.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    >>> model.compile(keras.optimizers.SGD(), loss='mse')
    >>> history = model.fit(np.arange(100).reshape(5, 20), np.zeros((5, 10)),
    ...                     epochs=10, batch_size=1, callbacks=[callback],
    ...                     verbose=0)
    >>> len(history.history['loss'])  # Only 4 epochs are run.
    4
    >>> callback.get_state()["stopped_epoch"], callback.get_state()["wait"]
    (3, 3)
    """

    state_key = "EarlyStopping"
    _run_attrs = ("_epoch", "wait", "best", "best_epoch", "best_weights", "_expected_arrays", "_lost_best_weights")

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            baseline=baseline,
            restore_best_weights=restore_best_weights,
            start_from_epoch=start_from_epoch,
        )
        self._init_run_state()
        self.best = None
        self.best_epoch = 0
        self._expected_arrays = 0  # best weights a restored state counts
        self._lost_best_weights = False

    # -- the resumable protocol -------------------------------------------------

    @property
    def state(self) -> EarlyStoppingState:
        """The current state (best weights counted, not included)."""
        count = _count(self.best_weights) if self.best_weights is not None else self._expected_arrays
        return EarlyStoppingState(
            epoch=self._epoch,
            wait=int(self.wait),
            best=None if self.best is None else float(self.best),
            best_epoch=int(self.best_epoch),
            stopped_epoch=int(self.stopped_epoch),
            best_weights=count,
        )

    def get_state(self) -> dict[str, Any]:
        """The state as a JSON-safe dict (see `EarlyStoppingState.to_dict`)."""
        self._check_stale()
        return self.state.to_dict()

    def set_state(self, state: Mapping[str, Any] | EarlyStoppingState) -> None:
        """Adopts a saved state; raises `ValueError` on an invalid one.

        It drops any best weights held: hand the saved ones over with
        `set_arrays` afterwards (as `rs.restore` and checkpoints do).
        """
        new = state if isinstance(state, EarlyStoppingState) else EarlyStoppingState.from_dict(state)
        self._mark_restored()
        if self.best_weights is not None and new == self.state:
            return  # the state already held (a second hand-over): keep its weights
        self._epoch = new.epoch
        self.wait = new.wait
        self.best = new.best
        self.best_epoch = new.best_epoch
        self.stopped_epoch = new.stopped_epoch
        self.best_weights = None
        self._expected_arrays = new.best_weights
        self._lost_best_weights = False

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The best weights, `{"best_weights.0": array, ...}`, or `{}`."""
        if self.best_weights is None:
            return {}
        return {f"best_weights.{i}": np.asarray(w) for i, w in enumerate(self.best_weights)}

    def set_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Adopts saved best weights (as from `get_arrays`).

        Raises:
            ValueError: a key is not `best_weights.<i>`, the indices are not
                0..n-1, or n differs from what the state counts.
        """
        found: dict[int, np.ndarray] = {}
        for key, value in arrays.items():
            m = _ARRAY_KEY.match(str(key))
            if m is None:
                raise ValueError(
                    f"Invalid array key for EarlyStopping. Received: {key!r}. "
                    "Expected keys best_weights.0, best_weights.1, ..."
                )
            found[int(m.group(1))] = np.asarray(value)
        if sorted(found) != list(range(len(found))):
            raise ValueError(
                "Invalid arrays for EarlyStopping. Received: best_weights indices "
                f"{sorted(found)}. Expected 0..{len(found) - 1}."
            )
        if len(found) != self._expected_arrays:
            raise ValueError(
                "Invalid arrays for EarlyStopping. Received: "
                f"{len(found)} best_weights arrays. Expected {self._expected_arrays}, "
                "as the state counts (call set_state first)."
            )
        self.best_weights = [found[i] for i in range(len(found))] if found else None

    # -- Keras hooks ----------------------------------------------------------

    def _reset_run(self) -> None:
        # What Keras resets in on_train_begin, except stopped_epoch (per fit).
        self.wait = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0
        self._expected_arrays = 0
        self._lost_best_weights = False

    def _reset_fit(self) -> None:
        self.stopped_epoch = 0

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self._attach(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Keras's reset; the first epoch decides what carries on (_run_state).
        self._begin_fit()

    def _check_best_weights(self) -> None:
        if self._expected_arrays and self.best_weights is None and not self._lost_best_weights:
            self._lost_best_weights = True
            if self.restore_best_weights:
                warnings.warn(
                    f"EarlyStopping: the restored state counts {self._expected_arrays} "
                    f"best-weight arrays (epoch {self.best_epoch + 1}) but they were not "
                    "restored; unless a later epoch improves, training ends with "
                    "its final weights.",
                    UserWarning,
                    stacklevel=3,
                )
        self._expected_arrays = 0 if self.best_weights is None else _count(self.best_weights)

    _settled = _check_best_weights

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._begin_epoch(epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Keras's own on_epoch_end (upstream fixes arrive), around our
        # bookkeeping. Restored best weights that were not delivered must not
        # be replaced by this epoch's weights unless this epoch improves:
        # Keras takes the current weights when `best_weights is None`, so a
        # placeholder stands in for the lost ones meanwhile.
        self._settle(epoch)  # hooks driven by hand may skip on_epoch_begin
        lost = self.restore_best_weights and self.best_weights is None and self._lost_best_weights
        if lost:
            self.best_weights = _LOST
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            if self.best_weights is _LOST:
                self.best_weights = None
            elif lost:
                self._lost_best_weights = False  # this epoch improved: real best weights
        self._end_epoch(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._settle(None)  # when no epoch ran in this fit
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            ki.model_of(self).set_weights(self.best_weights)
        self._end_fit()


def _count(weights: Any) -> int:
    """How many arrays `best_weights` holds (a model's `get_weights()` is a
    list; anything else a model returns counts as one)."""
    return len(weights) if isinstance(weights, (list, tuple)) else 1
