"""The states of `rs.ReduceLROnPlateau` and `rs.EarlyStopping`: immutable,
versioned, JSON-safe values, validated strictly on load.

`best` (the best monitored value so far) is a float, `None` before the first
epoch, or one of the strings `"nan"`, `"inf"`, `"-inf"` in the JSON form,
since JSON has no non-finite numbers.

Example:

>>> s = PlateauState(epoch=3, wait=2, best=0.5, learning_rates=(0.01,))
>>> PlateauState.from_dict(s.to_dict()) == s
True
>>> PlateauState.from_dict({**s.to_dict(), "wait": -1})
Traceback (most recent call last):
...
ValueError: Invalid value for field `wait` of PlateauState. Received: wait=-1. Expected an integer >= 0.
>>> EarlyStoppingState(best=float("inf")).to_dict()["best"]
'inf'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from resumable_scheduler.state import _fail, check_int, check_rates

MONITOR_STATE_VERSION = 1

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_best(best: float | None) -> float | str | None:
    """`best` in JSON form."""
    if best is None:
        return None
    best = float(best)
    if math.isnan(best):
        return "nan"
    if math.isinf(best):
        return "inf" if best > 0 else "-inf"
    return best


def check_best(value: Any, owner: str) -> float | None:
    """Decodes and validates `best` from its JSON form."""
    if value is None:
        return None
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail("best", value, 'a finite number, null, "nan", "inf" or "-inf"', owner)
    return float(value)


def _same_best(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _validate(data: Any, owner: str, ints: tuple[str, ...], extra: tuple[str, ...]) -> dict[str, Any]:
    known = ("version", *ints, "best", *extra)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"Invalid {owner}. Received: {type(data).__name__} {data!r:.200}. "
            f"Expected a dict with the keys {', '.join(known)}."
        )
    for key in data:
        if key not in known:
            _fail(str(key), data[key], f"no such field (known fields: {', '.join(known)})", owner)
    for key in known:
        if key not in data:
            raise ValueError(f"Missing field `{key}` in {owner}. Received keys: {sorted(map(str, data))}.")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != MONITOR_STATE_VERSION:
        _fail("version", version, f"{MONITOR_STATE_VERSION} (this release reads version {MONITOR_STATE_VERSION} only)", owner)
    out: dict[str, Any] = {key: check_int(key, data[key], owner) for key in ints}
    out["best"] = check_best(data["best"], owner)
    return out


class _MonitorStateBase:
    """Equality for the monitor states: `best` may be NaN (a NaN best equals
    a NaN best), every other field compares as in `to_dict()`."""

    best: float | None

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return _same_best(self.best, other.best) and dataclasses.replace(self, best=None).to_dict() == dataclasses.replace(other, best=None).to_dict()

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True, eq=False)
class PlateauState(_MonitorStateBase):
    """State of `rs.ReduceLROnPlateau`.

    Args:
        epoch: int. Epochs whose end the callback has processed (the next
            epoch it will see).
        wait: int. Epochs without improvement since the last improvement or
            reduction.
        best: float or None. The best monitored value so far.
        cooldown_counter: int. Epochs of cooldown left.
        learning_rates: tuple of float. The rate of each optimizer (one per
            sub-optimizer of a multi-optimizer) when the state was taken: a
            float rate, or the base rate of an `rs.StepSchedule`.
        version: int. The format version.
    """

    epoch: int = 0
    wait: int = 0
    best: float | None = None
    cooldown_counter: int = 0
    learning_rates: tuple[float, ...] = ()
    version: int = MONITOR_STATE_VERSION

    def __post_init__(self) -> None:
        for key, value in _validate_plateau(self.to_dict()).items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "epoch": self.epoch,
            "wait": self.wait,
            "best": encode_best(self.best),
            "cooldown_counter": self.cooldown_counter,
            "learning_rates": list(self.learning_rates),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "PlateauState":
        """Validates `data` (as from `to_dict`); raises `ValueError` naming the field."""
        return cls(**_validate_plateau(data))


def _validate_plateau(data: Any) -> dict[str, Any]:
    owner = "PlateauState"
    out = _validate(data, owner, ("epoch", "wait", "cooldown_counter"), ("learning_rates",))
    out["learning_rates"] = check_rates("learning_rates", data["learning_rates"], owner)
    out["version"] = MONITOR_STATE_VERSION
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class EarlyStoppingState(_MonitorStateBase):
    """State of `rs.EarlyStopping`.

    Args:
        epoch: int. Epochs whose end the callback has processed.
        wait: int. Epochs since the last improvement (as Keras counts them).
        best: float or None. The best monitored value so far.
        best_epoch: int. The epoch of `best`.
        stopped_epoch: int. The epoch at which the run was stopped, 0 if not.
        best_weights: int. How many arrays `best_weights` holds (0: none).
            The arrays themselves travel beside the JSON state
            (`get_arrays` / `set_arrays`), never inside it.
        version: int. The format version.
    """

    epoch: int = 0
    wait: int = 0
    best: float | None = None
    best_epoch: int = 0
    stopped_epoch: int = 0
    best_weights: int = 0
    version: int = MONITOR_STATE_VERSION

    def __post_init__(self) -> None:
        for key, value in _validate_es(self.to_dict()).items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "epoch": self.epoch,
            "wait": self.wait,
            "best": encode_best(self.best),
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "EarlyStoppingState":
        """Validates `data` (as from `to_dict`); raises `ValueError` naming the field."""
        return cls(**_validate_es(data))


def _validate_es(data: Any) -> dict[str, Any]:
    out = _validate(data, "EarlyStoppingState", ("epoch", "wait", "best_epoch", "stopped_epoch", "best_weights"), ())
    out["version"] = MONITOR_STATE_VERSION
    return out
