"""Per-step learning-rate schedules that run inside the compiled train step.

A `StepSchedule` gives the rate of every optimizer step as

    rate(step) = base_learning_rate * multiplier(step)

where `multiplier` is a function of the global step written with
`keras.ops` (linear warmup then cosine, piecewise constant, or your own), and
`base_learning_rate` is a variable that epoch-level callbacks
(`rs.LearningRateScheduler`, `rs.ReduceLROnPlateau`) read and set through
`resumable_scheduler.lr_access`, exactly as they set the rate of an optimizer
built with a float.

How it composes without a host sync per batch or a recompile:

- A `StepSchedule` *is* a `keras.Variable` (holding `base_learning_rate`) as
  well as a `keras.optimizers.schedules.LearningRateSchedule`. An optimizer
  given one tracks it as its second variable, right after `iterations`: the
  very slot where an optimizer built with a float keeps its `learning_rate`
  variable. So the base rate travels through the JAX train step as part of
  the optimizer state (a new value takes effect at the next step, with no
  retracing), and every checkpoint stores it (`.keras`, `.weights.h5`,
  backups) with the same layout as a float learning rate.
- The multiplier is a pure function of `optimizer.iterations`, which every
  checkpoint also stores, so a resumed run computes the same rate for every
  step, mid-epoch included.

Stock Keras refuses `optimizer.learning_rate = x` on an optimizer built with a
schedule, and so does it here; use `lr_access.set_rate(optimizer, x)` (what
our callbacks do) or `schedule.assign(x)`.

Use one schedule object per optimizer.

Example:

>>> sched = warmup_cosine(0.1, warmup_steps=2, decay_steps=8)
>>> [round(float(sched(s)), 4) for s in (0, 1, 2, 6, 10, 50)]
[0.0, 0.05, 0.1, 0.05, 0.0, 0.0]
>>> opt = keras.optimizers.SGD(learning_rate=sched)
>>> opt.variables[1] is sched  # where a float rate's variable would be
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from resumable_scheduler.protocol import float_max
from resumable_scheduler.state import check_int, check_rate

__all__ = [
    "Piecewise",
    "StepSchedule",
    "WarmupCosine",
    "piecewise",
    "warmup_cosine",
]

_PACKAGE = "resumable_scheduler"


def _fail(arg: str, value: Any, expected: str) -> None:
    raise ValueError(
        f"Invalid value for argument `{arg}`. Received: {arg}={value!r}. Expected {expected}."
    )


def _check_base(value: Any) -> float:
    try:
        base = check_rate("base_learning_rate", value, owner="StepSchedule")
    except ValueError:
        _fail("base_learning_rate", value, "a finite number >= 0")
        raise  # unreachable
    _check_fits("base_learning_rate", base, keras.config.floatx())
    return base


def _check_fits(arg: str, value: float, dtype: str, shown: Any = None) -> None:
    """A rate finite in float64 can still be inf in the variable's dtype."""
    most = float_max(dtype)
    if most is not None and value > most:
        _fail(arg, value if shown is None else shown,
              f"finite numbers >= 0 that {dtype} can hold (at most {most:.8g})" if shown is not None
              else f"a finite number >= 0 that {dtype} can hold (at most {most:.8g})")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule, keras.Variable):
    """A per-step schedule, `base_learning_rate * fn(step)`, with a settable base.

    Args:
        fn: Callable. Takes the global step (an integer tensor) and returns
            the multiplier for that step, written with `keras.ops` so that
            it runs inside the compiled step. To save the schedule in a
            `.keras` file, register `fn` with
            `keras.saving.register_keras_serializable`. Subclasses override
            `multiplier` instead and pass no `fn`.
        base_learning_rate: Float. The initial base rate (>= 0); epoch-level
            callbacks change it during training.
        name: String. The variable's name.

    Example:

    >>> @keras.saving.register_keras_serializable(package="docs")
    ... def halve_every_100(step):
    ...     return 0.5 ** ops.floor(ops.cast(step, "float32") / 100.0)
    >>> sched = StepSchedule(halve_every_100, base_learning_rate=0.2)
    >>> [round(float(sched(s)), 6) for s in (0, 99, 100, 250)]
    [0.2, 0.2, 0.1, 0.05]
    >>> _ = sched.assign(0.4)  # what an epoch-level callback does
    >>> round(float(sched(100)), 6)
    0.2
    """

    def __init__(
        self,
        fn: Callable[[Any], Any] | None = None,
        base_learning_rate: float = 1.0,
        name: str = "learning_rate",
    ) -> None:
        if fn is None and type(self).multiplier is StepSchedule.multiplier:
            _fail("fn", fn, "a callable `fn(step)` returning the multiplier for that step")
        if fn is not None and not callable(fn):
            _fail("fn", fn, "a callable `fn(step)` returning the multiplier for that step")
        base = _check_base(base_learning_rate)
        keras.Variable.__init__(
            self,
            base,
            dtype=keras.config.floatx(),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name=name,
        )
        self.fn = fn

    def multiplier(self, step: Any) -> Any:
        """The multiplier for `step` (a tensor), computed with `keras.ops`."""
        return self.fn(step)

    def __call__(self, step: Any) -> Any:
        """The learning rate for `step`: `base_learning_rate * multiplier(step)`."""
        m = ops.cast(self.multiplier(step), self.dtype)
        return ops.multiply(self.value, m)

    @property
    def base_learning_rate(self) -> float:
        """The current base rate, as a Python float.

        During `fit` on JAX, read it between epochs (as epoch-level callbacks
        do) or after `model.jax_state_sync()`: mid-epoch the live value is in
        the train step's state.
        """
        return float(ops.convert_to_numpy(self.value))

    def _config(self) -> dict[str, Any]:
        return {"base_learning_rate": self.base_learning_rate, "name": self.name}

    def get_config(self) -> dict[str, Any]:
        config = self._config()
        config["fn"] = keras.saving.serialize_keras_object(self.fn)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "StepSchedule":
        config = dict(config)
        if "fn" in config:
            config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        return cls(**config)

    def __repr__(self) -> str:
        try:
            base = f"{self.base_learning_rate:g}"
        except Exception:  # noqa: BLE001 - a purged JAX value mid-fit
            base = "?"
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items() if k not in ("base_learning_rate", "name"))
        return f"<{type(self).__name__} base_learning_rate={base}{', ' + args if args else ''}>"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupCosine(StepSchedule):
    """Linear warmup, then cosine decay: the usual recipe of modern training.

    The multiplier rises linearly from `initial_multiplier` at step 0 to 1 at
    step `warmup_steps`, then follows half a cosine down to `alpha` at step
    `warmup_steps + decay_steps`, and stays at `alpha` after that. It matches
    `keras.optimizers.schedules.CosineDecay(0, decay_steps, alpha,
    warmup_target=base, warmup_steps=warmup_steps)` when `initial_multiplier`
    is 0.

    Args:
        base_learning_rate: Float. The peak rate, reached at the end of warmup.
        warmup_steps: Integer >= 0. Steps of linear warmup.
        decay_steps: Integer >= 1. Steps of cosine decay after the warmup.
        alpha: Float in [0, 1]. The final multiplier.
        initial_multiplier: Float in [0, 1]. The multiplier at step 0.
        name: String. The variable's name.

    Example:

    >>> s = WarmupCosine(1.0, warmup_steps=10, decay_steps=100, alpha=0.1)
    >>> [round(float(s(k)), 3) for k in (0, 5, 10, 60, 110, 10**9)]
    [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]
    """

    def __init__(
        self,
        base_learning_rate: float,
        warmup_steps: int,
        decay_steps: int,
        alpha: float = 0.0,
        initial_multiplier: float = 0.0,
        name: str = "learning_rate",
    ) -> None:
        try:
            check_int("warmup_steps", warmup_steps)
        except ValueError:
            _fail("warmup_steps", warmup_steps, "an integer >= 0")
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
            _fail("decay_steps", decay_steps, "an integer >= 1")
        for arg, value in (("alpha", alpha), ("initial_multiplier", initial_multiplier)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                _fail(arg, value, "a number in [0, 1]")
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.alpha = float(alpha)
        self.initial_multiplier = float(initial_multiplier)
        super().__init__(None, base_learning_rate, name=name)

    def multiplier(self, step: Any) -> Any:
        s = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        rising = self.initial_multiplier + (1.0 - self.initial_multiplier) * (s / warmup)
        progress = ops.clip((s - float(self.warmup_steps)) / float(self.decay_steps), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.alpha + (1.0 - self.alpha) * cosine
        return ops.where(s < float(self.warmup_steps), rising, decayed)

    def _config(self) -> dict[str, Any]:
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "initial_multiplier": self.initial_multiplier,
            "name": self.name,
        }

    def get_config(self) -> dict[str, Any]:
        return self._config()


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Piecewise(StepSchedule):
    """A piecewise-constant multiplier of the step.

    Like `keras.optimizers.schedules.PiecewiseConstantDecay`: `values[0]`
    while `step <= boundaries[0]`, `values[i]` while
    `boundaries[i-1] < step <= boundaries[i]`, and `values[-1]` after the
    last boundary; each value is multiplied by `base_learning_rate`.

    Args:
        boundaries: List of strictly increasing integers >= 0.
        values: List of numbers >= 0, one more than `boundaries`.
        base_learning_rate: Float. Multiplies every value (default 1.0, so
            `values` are rates).
        name: String. The variable's name.

    Example:

    >>> s = Piecewise([2, 5], [0.1, 0.01, 0.001])
    >>> [round(float(s(k)), 6) for k in range(7)]
    [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    """

    def __init__(
        self,
        boundaries: Sequence[int],
        values: Sequence[float],
        base_learning_rate: float = 1.0,
        name: str = "learning_rate",
    ) -> None:
        if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
            _fail("boundaries", boundaries, "a list of increasing integers >= 0")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            _fail("values", values, "a list of numbers >= 0")
        bounds = list(boundaries)
        for b in bounds:
            if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                _fail("boundaries", boundaries, "a list of increasing integers >= 0")
        if any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])):
            _fail("boundaries", boundaries, "strictly increasing integers")
        vals = list(values)
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                _fail("values", values, "a list of finite numbers >= 0")
        if len(vals) != len(bounds) + 1:
            _fail("values", values, f"{len(bounds) + 1} entries, one more than `boundaries`")
        for v in vals:  # the multiplier is computed in float32
            _check_fits("values", float(v), "float32", shown=values)
        self.boundaries = bounds
        self.values = [float(v) for v in vals]
        super().__init__(None, base_learning_rate, name=name)

    def multiplier(self, step: Any) -> Any:
        values = ops.convert_to_tensor(self.values, dtype="float32")
        if not self.boundaries:
            return values[0]
        s = ops.convert_to_tensor(step)
        if not keras.backend.standardize_dtype(s.dtype).startswith(("int", "uint")):
            s = ops.cast(s, "int32")
        bounds = ops.convert_to_tensor(self.boundaries, dtype=s.dtype)
        index = ops.sum(ops.cast(ops.greater(s, bounds), "int32"))
        return ops.take(values, index)

    def _config(self) -> dict[str, Any]:
        return {
            "boundaries": list(self.boundaries),
            "values": list(self.values),
            "base_learning_rate": self.base_learning_rate,
            "name": self.name,
        }

    def get_config(self) -> dict[str, Any]:
        return self._config()


def warmup_cosine(
    base_learning_rate: float,
    warmup_steps: int,
    decay_steps: int,
    alpha: float = 0.0,
    initial_multiplier: float = 0.0,
) -> WarmupCosine:
    """Linear warmup then cosine decay; see `WarmupCosine`."""
    return WarmupCosine(base_learning_rate, warmup_steps, decay_steps, alpha, initial_multiplier)


def piecewise(
    boundaries: Sequence[int], values: Sequence[float], base_learning_rate: float = 1.0
) -> Piecewise:
    """A piecewise-constant schedule of the step; see `Piecewise`."""
    return Piecewise(boundaries, values, base_learning_rate)
