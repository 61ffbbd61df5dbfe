"""`rs.ReduceLROnPlateau`: Keras's callback, with state that survives restarts."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki
import numpy as np

from resumable_scheduler import lr_access
from resumable_scheduler._adapters.keras import print_msg
from resumable_scheduler.callbacks._run_state import RunStateMixin
from resumable_scheduler.monitor_state import PlateauState


class ReduceLROnPlateau(RunStateMixin, keras.callbacks.ReduceLROnPlateau):
    """Reduce the learning rate when a metric has stopped improving; resumable.

    Same arguments, decisions, logs (`logs["learning_rate"]`) and messages as
    `keras.callbacks.ReduceLROnPlateau`. In addition its state (`wait`,
    `best`, `cooldown_counter`, the epochs seen and the rates) is saved with
    every checkpoint of the model (`.keras`, `.weights.h5`, stock or
    `rs.BackupAndRestore`) and handed back by `rs.restore`, so a resumed run
    reduces the rate at the same epochs as an uninterrupted one. Stock Keras
    resets that state in `on_train_begin` (keras-team/keras issues 14862,
    9462, 11420).

    What resets and what persists: `on_train_begin` resets the state, as
    Keras does; at the first epoch, a state handed over by `set_state` (a
    restore) carries on, and so does the state of a `fit` continued with
    `initial_epoch > 0` in the same process; a `fit` starting at epoch 0
    without a restore is a new run and keeps the reset. After a restore,
    the optimizer's rate is set from the state when `fit` begins, even on a
    freshly compiled optimizer.

    It also reduces an optimizer built with an `rs.StepSchedule`: it scales
    the schedule's base rate (stock Keras raises `TypeError` there), and
    `min_lr` bounds that base rate.

    Place it before `keras.callbacks.ModelCheckpoint` or stock
    `BackupAndRestore` in `callbacks`, so their epoch-end checkpoints include
    its decision for that epoch; it warns otherwise. `rs.BackupAndRestore`
    needs no particular order.

    Args:
        monitor: String. Quantity to be monitored.
        factor: Float. Factor by which the learning rate will be reduced.
            `new_lr = lr * factor`.
        patience: Integer. Number of epochs with no improvement after which
            learning rate will be reduced.
        verbose: Integer. 0: quiet, 1: update messages.
        mode: String. One of `{'auto', 'min', 'max'}`.
        min_delta: Float. Threshold for measuring the new optimum.
        cooldown: Integer. Number of epochs to wait before resuming normal
            operation after the learning rate has been reduced.
        min_lr: Float. Lower bound on the learning rate.

    Example:

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    >>> h = model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=4, callbacks=[cb], verbose=0)
    >>> [round(r, 4) for r in h.history["learning_rate"]]
    [0.1, 0.1, 0.05, 0.025]
    >>> cb.state.wait, cb.state.epoch, [round(r, 5) for r in cb.state.learning_rates]
    (0, 4, [0.0125])
    >>> cb2 = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    >>> cb2.set_state(cb.get_state())  # what rs.restore does
    >>> cb2.state == cb.state
    True
    """

    state_key = "ReduceLROnPlateau"
    _run_attrs = ("_epoch", "wait", "best", "cooldown_counter")

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            monitor=monitor,
            factor=factor,
            patience=patience,
            verbose=verbose,
            mode=mode,
            min_delta=min_delta,
            cooldown=cooldown,
            min_lr=min_lr,
            **kwargs,
        )
        self._init_run_state()
        self.best = None
        # Rates of a restored state, until the fit that starts from it begins
        # its first epoch, and the optimizer they were last applied to.
        self._rates: tuple[float, ...] = ()
        self._rates_applied_to: Any = None

    # -- the resumable protocol -------------------------------------------------

    @property
    def state(self) -> PlateauState:
        """The current state; the rates are read live from the optimizer."""
        model = self._sync()
        rates = self._rates
        opt = getattr(model, "optimizer", None)
        if opt is not None and (not rates or self._rates_applied_to is opt):
            rates = tuple(lr_access.get_rate(o) for o in lr_access.optimizers_of(opt))
        return PlateauState(
            epoch=self._epoch,
            wait=int(self.wait),
            best=None if self.best is None else float(self.best),
            cooldown_counter=int(self.cooldown_counter),
            learning_rates=rates,
        )

    def get_state(self) -> dict[str, Any]:
        """The state as a JSON-safe dict (see `PlateauState.to_dict`)."""
        self._check_stale()
        return self.state.to_dict()

    def set_state(self, state: Mapping[str, Any] | PlateauState) -> None:
        """Adopts a saved state; raises `ValueError` on an invalid one.

        The saved rates are applied to the optimizer at once inside `fit`,
        otherwise when the next `fit` begins.
        """
        new = state if isinstance(state, PlateauState) else PlateauState.from_dict(state)
        self._epoch = new.epoch
        self.wait = new.wait
        self.best = new.best
        self.cooldown_counter = new.cooldown_counter
        self._rates = new.learning_rates
        self._rates_applied_to = None
        self._mark_restored()
        if self._in_fit:  # e.g. a backup loaded in on_train_begin
            self._apply_rates()

    def _apply_rates(self) -> None:
        opt = getattr(ki.model_of(self), "optimizer", None)
        if not self._rates or opt is None or self._rates_applied_to is opt:
            return
        opts = lr_access.optimizers_of(opt)
        if len(opts) != len(self._rates):
            warnings.warn(
                f"ReduceLROnPlateau: the restored state has {len(self._rates)} "
                f"learning rate(s) but the model has {len(opts)} optimizer(s); "
                "the optimizer's rates are left as they are.",
                UserWarning,
                stacklevel=3,
            )
        else:
            for o, rate in zip(opts, self._rates):
                lr_access.set_rate(o, rate)
        self._rates_applied_to = opt

    # -- Keras hooks ----------------------------------------------------------

    def _reset_run(self) -> None:
        ki.reset_plateau(self)  # Keras's: best, cooldown_counter, wait

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self._attach(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Keras's reset; the first epoch decides what carries on (_run_state).
        self._begin_fit()
        self._apply_rates()

    def _settled(self) -> None:
        self._rates = ()  # applied in on_train_begin (or at set_state): consumed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._begin_epoch(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._end_fit()

    def _reduce(self, optimizer: Any, epoch: int, name: str = "") -> bool:
        old_lr = lr_access.get_rate(optimizer)
        if old_lr > np.float32(self.min_lr):
            new_lr = max(old_lr * self.factor, self.min_lr)
            lr_access.set_rate(optimizer, new_lr)
            if self.verbose > 0:
                name_str = f" {name}" if name else ""
                print_msg(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing{name_str} learning rate to {new_lr}.")
            return True
        return False

    def _reduce_optimizer_lr(self, optimizer: Any, epoch: int, name: str = "") -> bool:
        # Keras's hook for one optimizer's reduction: ours reads and sets the
        # rate through lr_access (float rates and rs.StepSchedule bases).
        return self._reduce(optimizer, epoch, name)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Keras's own on_epoch_end (upstream fixes arrive), around our
        # bookkeeping of the epochs seen.
        self._settle(epoch)  # hooks driven by hand may skip on_epoch_begin
        super().on_epoch_end(epoch, logs)
        self._end_epoch(epoch)
