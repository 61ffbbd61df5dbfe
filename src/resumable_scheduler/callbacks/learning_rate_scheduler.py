"""`rs.LearningRateScheduler`: Keras's callback, with state that survives restarts."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki
import numpy as np

from resumable_scheduler._adapters.keras import print_msg, sync_model_state
from resumable_scheduler.lr_access import current_rate, get_rate, read_scalar, set_rate, step_schedule_of
from resumable_scheduler.protocol import float_max, to_python_float
from resumable_scheduler.state import ScheduleState, checked_replace
from resumable_scheduler.tracker import tracker_for

Schedule = Callable[..., Any]


def _where(epoch: int, opt_name: str | None) -> str:
    return f"at epoch {epoch}" + (f" for optimizer {opt_name}" if opt_name else "")


def _takes_lr(schedule: Schedule) -> bool:
    """True for `schedule(epoch, lr)`, False for the legacy `schedule(epoch)`.

    Decided once, from the signature, so that a `TypeError` raised inside the
    schedule reaches the user unchanged.
    """
    try:
        sig = inspect.signature(schedule)
    except (TypeError, ValueError):  # builtins without a signature
        return True
    positional = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def _read_rate(optimizer: Any) -> float:
    # The rate the schedule controls: a float rate, or an rs.StepSchedule's base.
    return get_rate(optimizer)


def _has_learning_rate(optimizer: Any) -> bool:
    # `hasattr(optimizer, "learning_rate")` without calling the property when
    # the class defines it: for an optimizer built with a schedule, the
    # property computes the schedule (hundreds of microseconds, every epoch).
    return isinstance(getattr(type(optimizer), "learning_rate", None), property) or hasattr(
        optimizer, "learning_rate"
    )


def _rate_limit(opt: Any) -> tuple[float | None, str]:
    """The largest rate `opt`'s learning-rate variable (or `rs.StepSchedule`
    base) can hold, and its dtype name."""
    holder = step_schedule_of(opt)
    dtype = getattr(holder if holder is not None else getattr(opt, "learning_rate", None), "dtype", None)
    name = keras.backend.standardize_dtype(dtype or keras.config.floatx())
    return float_max(name), name


def _check_fits(state: ScheduleState, opts: list[Any], rates: tuple[float, ...], top: Any) -> None:
    """Raises `ValueError` (changing nothing) when a restored step or rate
    does not fit the optimizer's variables: `iterations` is int32 on JAX, the
    rate float32 (a crafted state could hold 2**40 or 1e300)."""
    dtype = np.dtype(keras.backend.standardize_dtype(top.iterations.dtype))
    if np.issubdtype(dtype, np.integer) and state.step > np.iinfo(dtype).max:
        raise ValueError(
            f"Invalid restored state: step={state.step} does not fit the optimizer's "
            f"`iterations` variable ({dtype.name}, at most {np.iinfo(dtype).max}). "
            "Nothing was changed."
        )
    for opt, rate in zip(opts, rates):
        most, name = _rate_limit(opt)
        if most is not None and rate > most:
            raise ValueError(
                f"Invalid restored state: learning_rate={rate!r} does not fit optimizer "
                f"{opt.name}'s learning rate ({name}, at most {most:.8g}). Nothing was changed."
            )


class LearningRateScheduler(keras.callbacks.Callback):
    """Learning rate scheduler whose state is saved with the model's checkpoints.

    At the beginning of every epoch it gets the learning rate from
    `schedule(epoch, lr)` (or the legacy `schedule(epoch)`) and applies it to
    the optimizer, exactly like `keras.callbacks.LearningRateScheduler`. In
    addition it keeps a `ScheduleState` (epoch, batch, step, rates) that is
    written into every `.keras` / `.weights.h5` checkpoint of the model and
    read back by `rs.restore`, so a resumed run never applies the schedule to
    an epoch twice, and a freshly compiled optimizer gets the right rate.

    Args:
        schedule: Callable. Takes an epoch index (int, from 0) and the current
            learning rate (float), returns the new rate: a Python float, a
            NumPy scalar, or a 0-d NumPy, JAX or torch array.
        verbose: Integer. 0: quiet, 1: log update messages.

    Example:

    >>> def scheduler(epoch, lr):
    ...     if epoch < 10:
    ...         return lr
    ...     else:
    ...         return lr * ops.exp(-0.1)
    >>> model = keras.models.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    >>> model.compile(keras.optimizers.SGD(), loss='mse')
    >>> callback = LearningRateScheduler(scheduler)
    >>> history = model.fit(np.arange(100).reshape(5, 20), np.zeros((5, 10)),
    ...                     epochs=15, callbacks=[callback], verbose=0)
    >>> round(float(model.optimizer.learning_rate), 5)
    0.00607
    >>> callback.state.epoch, len(callback.state.history)
    (15, 15)
    """

    state_key = "LearningRateScheduler"

    def __init__(self, schedule: Schedule, verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "Invalid value for argument `schedule`. "
                f"Received: schedule={schedule!r}. Expected a callable "
                "`schedule(epoch, lr)` or `schedule(epoch)`."
            )
        self.schedule = schedule
        self.verbose = verbose
        self._takes_lr = _takes_lr(schedule)
        self._state: ScheduleState | None = None
        self._pending_apply = False
        self._restored = False  # set_state since the last fit began
        self._first_epoch = False  # the next on_epoch_begin is the fit's first

    # -- the resumable protocol ---------------------------------------------

    @property
    def state(self) -> ScheduleState:
        """The current state, with the live position, step and rate."""
        base = self._state or ScheduleState()
        model = ki.model_of(self)
        if model is None:
            return base
        tracker = tracker_for(model)
        changes: dict[str, Any] = {"epoch": tracker.epoch, "batch": tracker.batch}
        opt = getattr(model, "optimizer", None)
        if opt is not None and not self._pending_apply:
            sync_model_state(model)
            changes["step"] = int(read_scalar(opt.iterations))
            subs = list(getattr(opt, "optimizers", None) or [])
            if subs:
                rates = tuple(_read_rate(o) for o in subs)
                changes["optimizer_learning_rates"] = rates
                changes["learning_rate"] = rates[0]
            else:
                changes["learning_rate"] = _read_rate(opt)
        # Validates the live values (and their fit with the history) as
        # `dataclasses.replace` does, in O(1) rather than O(epochs).
        return checked_replace(base, **changes)

    def get_state(self) -> dict[str, Any]:
        """The state as a JSON-safe dict (see `ScheduleState.to_dict`)."""
        return self.state.to_dict()

    def set_state(self, state: Mapping[str, Any] | ScheduleState) -> None:
        """Adopts a saved state; the optimizer's rate follows it at the next
        `fit` (or epoch) start. Raises `ValueError` on an invalid state."""
        new = state if isinstance(state, ScheduleState) else ScheduleState.from_dict(state)
        self._state = new
        self._pending_apply = True
        self._restored = True
        model = ki.model_of(self)
        if model is not None:
            tracker_for(model).set_position(new.epoch, new.batch)

    # -- Keras hooks ----------------------------------------------------------

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        tracker = tracker_for(model)
        if self._state is not None:
            tracker.set_position(self._state.epoch, self._state.batch)
        tracker.register(self)

    def _optimizers(self) -> list[Any]:
        return self._optimizers_and_multi()[0]

    def _optimizers_and_multi(self) -> tuple[list[Any], bool]:
        """The optimizers to schedule, and whether the model's optimizer is
        a multi-optimizer (has `optimizers`)."""
        opt = ki.model_of(self).optimizer
        multi = hasattr(opt, "optimizers")
        if not multi and not _has_learning_rate(opt):
            raise ValueError('Optimizer must have a "learning_rate" attribute.')
        return (list(opt.optimizers) if multi else [opt]), multi

    def _apply_pending(self) -> None:
        if not self._pending_apply or self._state is None:
            return
        opts = self._optimizers()
        rates = self._state.optimizer_learning_rates or (self._state.learning_rate,)
        top = ki.model_of(self).optimizer
        _check_fits(self._state, opts, rates, top)
        for opt, rate in zip(opts, rates):
            set_rate(opt, rate)
        # A freshly compiled optimizer restarts at step 0; the state knows better.
        if int(read_scalar(top.iterations)) != self._state.step:
            top.iterations.assign(self._state.step)
        self._pending_apply = False

    def _fresh_state(self) -> ScheduleState:
        """The state of a new run: the optimizers' current rates, no history."""
        opts = self._optimizers()
        rate = _read_rate(opts[0])
        rates = tuple(_read_rate(o) for o in opts) if len(opts) > 1 else ()
        return ScheduleState(
            learning_rate=rate,
            initial_learning_rate=rate,
            optimizer_learning_rates=rates,
            optimizer_histories=tuple(() for _ in rates),
        )

    def on_train_begin(self, logs: dict | None = None) -> None:
        tracker_for(ki.model_of(self)).begin_fit(self.params)
        if self._state is None:
            self._state = self._fresh_state()
        self._apply_pending()
        self._first_epoch = True

    def _compute(self, epoch: int, lr: float, opt_name: str | None) -> float:
        raw = self.schedule(epoch, lr) if self._takes_lr else self.schedule(epoch)
        try:
            value = to_python_float(raw, "x")
        except ValueError:
            raise ValueError(
                f"The output of the `schedule` function {_where(epoch, opt_name)} should be a real "
                f"scalar (float, NumPy scalar, or 0-d array). Got: {raw!r} "
                f"of type {type(raw).__name__}."
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"The output of the `schedule` function {_where(epoch, opt_name)} should be a finite "
                f"learning rate >= 0. Got: {value!r}."
            )
        # Finite as a Python float is not enough: the optimizer's rate variable
        # (float32, bfloat16...) would hold inf.
        opts = self._optimizers()
        opt = next((o for o in opts if opt_name is not None and o.name == opt_name), opts[0])
        most, name = _rate_limit(opt)
        if most is not None and value > most:
            raise ValueError(
                f"The output of the `schedule` function {_where(epoch, opt_name)} should be a finite "
                f"learning rate >= 0 that the optimizer's {name} "
                f"learning rate can hold (at most {most:.8g}). Got: {value!r}."
            )
        return value

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._pending_apply:
            self._apply_pending()
        if self._first_epoch:
            self._first_epoch = False
            restored, self._restored = self._restored, False
            if epoch == 0 and not restored and self._state is not None and self._state.history:
                # A new run with a reused instance: as stock Keras, the
                # schedule starts over from the optimizer's current rate.
                self._state = self._fresh_state()
                tracker_for(ki.model_of(self)).set_position(0, 0)
        state = self._state
        assert state is not None
        opts, multi = self._optimizers_and_multi()
        decided = state.rate_for(epoch)
        rates: list[float] = []
        for idx, opt in enumerate(opts):
            if decided is not None:
                # This epoch's rate was decided before an interruption.
                if multi and idx < len(state.optimizer_histories):
                    rate = state.optimizer_histories[idx][epoch]
                else:
                    rate = decided
            else:
                rate = self._compute(epoch, _read_rate(opt), opt.name if multi else None)
            set_rate(opt, rate)
            rates.append(rate)
            if self.verbose > 0:
                target = f"{opt.name} learning rate" if multi else "learning rate"
                print_msg(f"\nEpoch {epoch + 1}: LearningRateScheduler setting {target} to {rate}.")
        self._state = state.begin_epoch(epoch, rates[0], tuple(rates) if multi else ())
        tracker_for(ki.model_of(self)).note_epoch_begin(epoch)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        # Runs per batch, so: count only, and never touch `self.model` (on JAX
        # it forces a device sync). Batch *begin* is always dispatched in
        # order on the main thread, while batch *end* hooks may run out of
        # order in Keras's thread pool.
        tracker_for(ki.model_of(self)).note_batch_begin(batch, getattr(ki.model_of(self), "steps_per_execution", 1) or 1)

    def on_train_end(self, logs: dict | None = None) -> None:
        tracker_for(ki.model_of(self)).end_fit()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        tracker_for(ki.model_of(self)).note_epoch_end(epoch)
        if logs is None:
            return
        opt = ki.model_of(self).optimizer
        if hasattr(opt, "optimizers"):
            for o in opt.optimizers:
                logs[f"learning_rate_{o.name}"] = current_rate(o)
        else:
            logs["learning_rate"] = current_rate(opt)
