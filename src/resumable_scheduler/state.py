"""The scheduler's state: an immutable, versioned, JSON-safe value.

`ScheduleState` is the single source of truth for what
`rs.LearningRateScheduler` does next. It is a frozen dataclass: every update
returns a new value, and `to_dict()` / `from_dict()` round-trip it through
plain JSON types. `from_dict` validates strictly and raises `ValueError`
naming the field and the value; it never uses pickle or eval.

Example:

>>> s = ScheduleState(learning_rate=0.01, initial_learning_rate=0.01)
>>> s = s.begin_epoch(0, 0.01).end_epoch(0, step=5, learning_rate=0.01)
>>> (s.epoch, s.batch, s.step, s.history)
(1, 0, 5, (0.01,))
>>> ScheduleState.from_dict(s.to_dict()) == s
True
>>> ScheduleState.from_dict({**s.to_dict(), "learning_rate": float("nan")})
Traceback (most recent call last):
...
ValueError: Invalid value for field `learning_rate` of ScheduleState. Received: learning_rate=nan. Expected a finite number >= 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from resumable_scheduler.protocol import MAX_INT, short, short_name

STATE_VERSION = 1


def _fail(field: str, value: Any, expected: str, owner: str = "ScheduleState") -> None:
    # A crafted checkpoint may hold megabytes in one field (or its name):
    # echo a bounded part of both.
    field = short_name(field)
    raise ValueError(
        f"Invalid value for field `{field}` of {owner}. "
        f"Received: {field}={short(value)}. Expected {expected}."
    )


def check_int(field: str, value: Any, owner: str = "ScheduleState") -> int:
    """Returns `value` if it is an int from 0 to `MAX_INT` (not a bool).

    The bound is what an int64 holds (the widest `optimizer.iterations`): a
    step of `10**30` read from a crafted file would otherwise pass here and
    fail inside `fit` with an `OverflowError`.

    >>> check_int("step", 2**64)
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for field `step` of ScheduleState. Received: step=18446744073709551616. Expected an integer >= 0 and <= 9223372036854775807 (int64).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(field, value, "an integer >= 0", owner)
    if value > MAX_INT:
        _fail(field, value, f"an integer >= 0 and <= {MAX_INT} (int64)", owner)
    return value


def check_rate(field: str, value: Any, owner: str = "ScheduleState") -> float:
    """Returns `value` as a float if it is a finite, non-negative real."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, "a finite number >= 0", owner)
    try:
        value = float(value)
    except OverflowError:
        _fail(field, value, "a finite number >= 0", owner)
    if not math.isfinite(value) or value < 0:
        _fail(field, value, "a finite number >= 0", owner)
    return value


def check_rates(field: str, value: Any, owner: str = "ScheduleState") -> tuple[float, ...]:
    """Returns `value` as a tuple of floats if it is a list of rates."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        _fail(field, value, "a list of finite numbers >= 0", owner)
    # Fast path (every epoch re-validates the whole history): plain finite
    # floats >= 0 need no per-element conversion.
    if all(type(v) is float for v in value) and all(map(math.isfinite, value)) and min(value, default=0.0) >= 0:
        return tuple(value)
    return tuple(check_rate(f"{field}[{i}]", v, owner) for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class ScheduleState:
    """Immutable state of `rs.LearningRateScheduler`.

    Args:
        epoch: int. The next epoch to run, or the epoch in progress when
            `batch > 0`.
        batch: int. Batches of `epoch` already trained (0 at a boundary).
        step: int. The optimizer's global step (`optimizer.iterations`).
        learning_rate: float. The optimizer's learning rate when captured.
        initial_learning_rate: float. The rate before the first epoch.
        history: tuple of float. The rate used at every epoch so far,
            `history[e]` for epoch `e`.
        optimizer_learning_rates: tuple of float. For models whose optimizer
            has `optimizers` (multi-optimizer), the rate of each one; empty
            otherwise. `learning_rate` mirrors the first.
        optimizer_histories: tuple of tuples. Per sub-optimizer history.
        version: int. The format version, `STATE_VERSION`.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    learning_rate: float = 0.0
    initial_learning_rate: float = 0.0
    history: tuple[float, ...] = ()
    optimizer_learning_rates: tuple[float, ...] = ()
    optimizer_histories: tuple[tuple[float, ...], ...] = ()
    version: int = STATE_VERSION

    def __post_init__(self) -> None:
        # Validate (and normalise lists to tuples) on every construction, so
        # an invalid state can never exist.
        d = self.to_dict()
        clean = _validate(d)
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    # -- transitions (each returns a new state) ------------------------------

    def begin_epoch(
        self, epoch: int, rate: float, rates: Sequence[float] = ()
    ) -> "ScheduleState":
        """The state after the rate(s) for `epoch` were decided.

        History is cut or padded so that `history[epoch] == rate`; epochs that
        were skipped (an `initial_epoch` beyond the state) repeat the rate that
        was in effect.
        """
        # Only the new values need checking: everything else is copied from
        # this (valid) state, and the lengths are consistent by construction.
        # Re-validating the whole history every epoch made each epoch O(epochs).
        epoch = check_int("epoch", epoch)
        rate = check_rate("learning_rate", rate)
        rates = () if type(rates) is tuple and not rates else check_rates("optimizer_learning_rates", rates)
        olds, fills = self.optimizer_histories, self.optimizer_learning_rates
        hists = tuple(
            _cut_or_pad(olds[i] if i < len(olds) else (), epoch, fills[i] if i < len(fills) else r, r)
            for i, r in enumerate(rates)
        ) if rates else ()
        return _trusted_replace(
            self,
            epoch=epoch,
            batch=self.batch if epoch == self.epoch else 0,
            learning_rate=rate,
            history=_cut_or_pad(self.history, epoch, self.learning_rate, rate),
            optimizer_learning_rates=rates,
            optimizer_histories=hists,
        )

    def end_epoch(self, epoch: int, **changes: Any) -> "ScheduleState":
        """The state after every batch of `epoch` was trained."""
        return checked_replace(self, epoch=epoch + 1, batch=0, **changes)

    def rate_for(self, epoch: int) -> float | None:
        """The rate already decided for `epoch`, or None."""
        return self.history[epoch] if epoch < len(self.history) else None

    # -- serialization --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: only str keys, ints, floats and lists."""
        return {
            "version": self.version,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "learning_rate": self.learning_rate,
            "initial_learning_rate": self.initial_learning_rate,
            "history": list(self.history),
            "optimizer_learning_rates": list(self.optimizer_learning_rates),
            "optimizer_histories": [list(h) for h in self.optimizer_histories],
        }

    @classmethod
    def from_dict(cls, data: Any) -> "ScheduleState":
        """Validates `data` (as from `to_dict`) and returns the state.

        Raises:
            ValueError: on an unknown version, a missing, unknown or mistyped
                field, or an inconsistent state; the message names the field
                and the value received.
        """
        return cls(**_validate(data))


def _cut_or_pad(hist: tuple[float, ...], epoch: int, fill: float, rate: float) -> tuple[float, ...]:
    """`hist` cut, or padded with `fill`, to `epoch` entries, then `rate`."""
    n = len(hist)
    if n == epoch:  # the usual case: the next epoch
        return hist + (rate,)
    if n > epoch:
        return hist[:epoch] + (rate,)
    return hist + (fill,) * (epoch - n) + (rate,)


_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleState))


def _trusted_replace(state: ScheduleState, **changes: Any) -> ScheduleState:
    """`dataclasses.replace` without re-validation, for transitions whose
    result is valid by construction (see `begin_epoch`)."""
    unknown = [k for k in changes if k not in _FIELDS]
    if unknown:
        raise TypeError(f"Unknown ScheduleState fields: {sorted(unknown)}")
    new = object.__new__(type(state))
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


#: Fields `checked_replace` validates on their own; changing any other one
#: (history, version, ...) takes the full validation.
_FIELD_CHECKS = {
    "epoch": check_int,
    "batch": check_int,
    "step": check_int,
    "learning_rate": check_rate,
    "initial_learning_rate": check_rate,
    "optimizer_learning_rates": check_rates,
}


def checked_replace(state: ScheduleState, **changes: Any) -> ScheduleState:
    """`dataclasses.replace(state, **changes)`: the same result, and the same
    `ValueError` for an invalid one, without re-validating the whole history.

    `state` is valid, so only the changed fields and the lengths that tie the
    fields together can make the result invalid. Those are checked here (in
    O(number of optimizers)); anything they reject, or a change of another
    field, goes through `dataclasses.replace`, whose full validation raises
    exactly as before.
    """
    values = dict(state.__dict__)
    try:
        for key, value in changes.items():
            values[key] = _FIELD_CHECKS[key](key, value)
    except Exception:  # noqa: BLE001 - the full path raises what it always raised
        return dataclasses.replace(state, **changes)
    n, epoch = len(values["history"]), values["epoch"]
    hists = values["optimizer_histories"]
    if (
        len(hists) != len(values["optimizer_learning_rates"])
        or not (n == epoch or n == epoch + 1)
        or (values["batch"] > 0 and n != epoch + 1)
        or any(len(h) != n for h in hists)
    ):
        return dataclasses.replace(state, **changes)
    new = object.__new__(type(state))
    new.__dict__.update(values)
    return new


_REQUIRED = ("version", "epoch", "batch", "step", "learning_rate",
             "initial_learning_rate", "history")
_OPTIONAL = ("optimizer_learning_rates", "optimizer_histories")


def _validate(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(
            "Invalid ScheduleState. Received: "
            f"{type(data).__name__} {short(data)}. Expected a dict with the keys "
            f"{', '.join(_REQUIRED)}."
        )
    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            _fail(str(key), data[key], f"no such field (known fields: {', '.join(_REQUIRED + _OPTIONAL)})")
    for key in _REQUIRED:
        if key not in data:
            raise ValueError(
                f"Missing field `{key}` in ScheduleState. Received keys: "
                f"{short(sorted(map(str, data)), 300)}."
            )
    version = data["version"]
    if isinstance(version, bool) or version != STATE_VERSION or not isinstance(version, int):
        _fail("version", version, f"{STATE_VERSION} (this release of resumable_scheduler reads version {STATE_VERSION} only)")
    out: dict[str, Any] = {"version": STATE_VERSION}
    for key in ("epoch", "batch", "step"):
        out[key] = check_int(key, data[key])
    for key in ("learning_rate", "initial_learning_rate"):
        out[key] = check_rate(key, data[key])
    out["history"] = check_rates("history", data["history"])
    out["optimizer_learning_rates"] = check_rates(
        "optimizer_learning_rates", data.get("optimizer_learning_rates", ())
    )
    hists = data.get("optimizer_histories", ())
    if isinstance(hists, (str, bytes, Mapping)) or not isinstance(hists, Sequence):
        _fail("optimizer_histories", hists, "a list of lists of finite numbers >= 0")
    out["optimizer_histories"] = tuple(
        check_rates(f"optimizer_histories[{i}]", h) for i, h in enumerate(hists)
    )
    if len(out["optimizer_histories"]) != len(out["optimizer_learning_rates"]):
        _fail("optimizer_histories", data.get("optimizer_histories"),
              f"one list per entry of optimizer_learning_rates ({len(out['optimizer_learning_rates'])})")
    n, epoch = len(out["history"]), out["epoch"]
    if n not in (epoch, epoch + 1):
        _fail("history", data["history"], f"{epoch} or {epoch + 1} entries for epoch={epoch}")
    if out["batch"] > 0 and n != epoch + 1:
        _fail("history", data["history"], f"{epoch + 1} entries: batch={out['batch']} means epoch {epoch} is in progress")
    for i, h in enumerate(out["optimizer_histories"]):
        if len(h) != n:
            _fail(f"optimizer_histories[{i}]", list(h), f"{n} entries, as many as `history`")
    return out
