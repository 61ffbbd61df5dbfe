"""Reading and setting an optimizer's learning rate, whatever holds it.

Every epoch-level callback of this package goes through these functions, so
they all work the same way on an optimizer built with a float and on one
built with an `rs.StepSchedule`:

- `get_rate` / `set_rate` read and set *the rate a callback controls*: the
  `learning_rate` variable of an optimizer built with a float, or the
  `base_learning_rate` of an `rs.StepSchedule` (which then scales the whole
  per-step curve). Stock Keras raises `TypeError` on
  `optimizer.learning_rate = x` for any optimizer built with a schedule;
  `set_rate` composes with ours, and raises the same `TypeError` (with a
  hint) for other schedules, whose rate cannot be set.
- `current_rate` is what Keras reports as `optimizer.learning_rate`: the
  rate of the next step. It goes into `logs["learning_rate"]`.

On JAX, call these between epochs, or after `model.jax_state_sync()`
mid-epoch: during an epoch the live values are in the train step's state.

Example:

>>> opt = keras.optimizers.SGD(learning_rate=rs.schedules.warmup_cosine(0.1, 10, 90))
>>> get_rate(opt), current_rate(opt)  # base 0.1; step 0 of the warmup
(0.10000000149011612, 0.0)
>>> set_rate(opt, 0.05)
>>> round(get_rate(opt), 6)
0.05
>>> set_rate(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)), 0.1)
Traceback (most recent call last):
...
TypeError: This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` constructor argument, hence its learning rate is not settable. If you need the learning rate to be settable, you should instantiate the optimizer with a float `learning_rate` argument. (resumable_scheduler: the optimizer SGD holds a ExponentialDecay learning-rate schedule, whose rate cannot be set. Build it with an rs.StepSchedule (such as rs.schedules.warmup_cosine(...)) to combine a per-step schedule with epoch-level callbacks.)
"""

from __future__ import annotations

import math
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki
import numpy as np

from resumable_scheduler.schedules import StepSchedule

__all__ = ["current_rate", "get_rate", "optimizers_of", "read_scalar", "set_rate", "step_schedule_of"]

#: What Keras raises when a callback sets the rate of an optimizer built with
#: a `LearningRateSchedule` (`BaseOptimizer.learning_rate`'s setter). Our
#: error starts with it, word for word, so code matching Keras's message
#: (Keras's own tests do) keeps working; tests/unit/test_adapters.py pins it.
KERAS_SCHEDULE_NOT_SETTABLE = (
    "This optimizer was created with a `LearningRateSchedule` object as its "
    "`learning_rate` constructor argument, hence its learning rate is not "
    "settable. If you need the learning rate to be settable, you should "
    "instantiate the optimizer with a float `learning_rate` argument."
)


def optimizers_of(optimizer: Any) -> list[Any]:
    """The optimizers whose rates a callback handles: the sub-optimizers of a
    multi-optimizer (`optimizer.optimizers`), else `[optimizer]`."""
    subs = getattr(optimizer, "optimizers", None)
    return list(subs) if subs else [optimizer]


def step_schedule_of(optimizer: Any) -> StepSchedule | None:
    """The `rs.StepSchedule` an optimizer was built with, or None.

    Found among `optimizer.variables` (public API), where the optimizer
    tracks it in place of a float rate's variable.
    """
    for v in getattr(optimizer, "variables", ()):
        if isinstance(v, StepSchedule):
            return v
    inner = getattr(optimizer, "inner_optimizer", None)  # LossScaleOptimizer
    return step_schedule_of(inner) if inner is not None else None


def read_scalar(value: Any) -> Any:
    """The host value of a scalar variable or tensor, for `float()` / `int()`.

    The same number as `keras.ops.convert_to_numpy(value)`, without its
    per-call dispatch, which costs several times more than the read itself
    (and every epoch-level callback reads the rate at least twice an
    epoch): a `keras.Variable` is read through `.value`; a torch tensor
    (which may require grad or live on a GPU) through `.detach().item()`,
    which gives the exact value of any float dtype; anything else through
    `np.asarray`. Falls back to `convert_to_numpy` for whatever those
    cannot read.

    >>> v = keras.Variable(0.1)
    >>> float(read_scalar(v)) == float(keras.ops.convert_to_numpy(v))
    True
    """
    if isinstance(value, keras.Variable):
        value = value.value
    try:
        if hasattr(value, "detach"):  # torch
            return value.detach().item()
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - the slow path reads, or raises, as before
        return keras.ops.convert_to_numpy(value)


def _to_float(value: Any) -> float:
    return float(read_scalar(value))


def current_rate(optimizer: Any) -> float:
    """The rate of the optimizer's next step, `float(optimizer.learning_rate)`."""
    return _to_float(optimizer.learning_rate)


def get_rate(optimizer: Any) -> float:
    """The rate `set_rate` controls: a float rate, or a StepSchedule's base.

    For an optimizer whose rate cannot be set (a stock schedule or a
    callable), the current rate.
    """
    sched = step_schedule_of(optimizer)
    if sched is not None:
        return _to_float(sched)  # its base rate, `sched.base_learning_rate`
    return current_rate(optimizer)


def set_rate(optimizer: Any, value: float) -> None:
    """Sets the rate `get_rate` reads; for a StepSchedule, its base rate.

    Raises:
        ValueError: `value` is not a finite number >= 0.
        TypeError: the optimizer holds a schedule other than ours, or a callable.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            "Invalid value for argument `value`. "
            f"Received: value={value!r}. Expected a finite learning rate >= 0."
        )
    sched = step_schedule_of(optimizer)
    if sched is not None:
        sched.assign(float(value))
        return
    # Reading the property costs little for a float rate (it returns the
    # variable itself, not its value); only a stock schedule computes here.
    if isinstance(optimizer.learning_rate, keras.Variable):
        optimizer.learning_rate = float(value)
        return
    held = ki.learning_rate_slot(optimizer)
    what = type(held).__name__ if held is not None else "non-variable"
    ours = (
        f"the optimizer {type(optimizer).__name__} holds a {what} learning-rate "
        "schedule, whose rate cannot be set. Build it with an rs.StepSchedule "
        "(such as rs.schedules.warmup_cosine(...)) to combine a per-step "
        "schedule with epoch-level callbacks."
    )
    if isinstance(held, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(f"{KERAS_SCHEDULE_NOT_SETTABLE} (resumable_scheduler: {ours})")
    raise TypeError(ours[0].upper() + ours[1:])
