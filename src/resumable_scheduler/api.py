"""`rs.read_state` and `rs.restore`: reading saved states back from any checkpoint."""

from __future__ import annotations

import os
from typing import Any

from resumable_scheduler import snapshot
from resumable_scheduler.protocol import Resumable, short_name
from resumable_scheduler.snapshot import Snapshot
from resumable_scheduler.storage import find_envelope
from resumable_scheduler.tracker import warn_no_state

SCHEDULER_KEY = snapshot.SCHEDULER_KEY


def read_state(path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """Returns the resumable state saved in a checkpoint, as a dict.

    The dict has the keys of `ScheduleState.to_dict()` (`epoch`, `batch`,
    `step`, `learning_rate`, `history`, ...) plus `callbacks` (every saved
    callback state by key) and `source` (what was read).

    Args:
        path: str. A `.keras` file, a `.weights.h5` file, a backup directory
            or an Orbax checkpoint directory.
        step: int, optional. For an Orbax directory, the step to read
            (default: the newest complete one).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: nothing resumable is saved there, or it is invalid (the
            message names the file and the field), or `step` is given for a
            layout without steps.
    """
    return state_of(*read_envelope(path, step=step))


def read_envelope(path: str | os.PathLike[str], step: int | None = None) -> tuple[dict[str, Any], str]:
    """`(envelope, source)` of a checkpoint (see `read_state`); raises
    `ValueError` for a file without resumable state (stock Keras's)."""
    doc, source = find_envelope(path, step=step)
    if doc is None:
        raise ValueError(
            f"No resumable_scheduler state in {source!r}: it was written by stock "
            "Keras or without a resumable callback."
        )
    return doc, str(source)


def state_of(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """`read_state`'s dict of an envelope read from `source`."""
    callbacks = doc[snapshot.CALLBACKS]
    out: dict[str, Any] = {}
    if SCHEDULER_KEY in callbacks:
        from resumable_scheduler.state import ScheduleState

        out.update(ScheduleState.from_dict(callbacks[SCHEDULER_KEY]).to_dict())
    position = doc.get(snapshot.POSITION) or {}
    for key in ("epoch", "batch", "step"):
        if key in position:
            out[key] = position[key]
        out.setdefault(key, 0)
    out.setdefault("learning_rate", None)
    out.setdefault("history", [])
    out["callbacks"] = callbacks
    out["source"] = source
    return out


def restore(path: str | os.PathLike[str], *callbacks: Resumable, step: int | None = None) -> int:
    """Loads every resumable callback's state from a checkpoint.

    Returns the epoch to pass to `fit(initial_epoch=...)`. A checkpoint
    without our state (written by stock Keras) gives a warning and
    returns 0: the callbacks keep their initial state and the scheduler
    starts from the optimizer's learning rate.

    Raises:
        TypeError: an argument is not a resumable callback.
        ValueError: the saved state is invalid (nothing is changed).
    """
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Resumable):
            raise TypeError(
                f"Invalid value for argument `callbacks[{i}]`. Received: {cb!r}. "
                "Expected a resumable callback (with state_key, get_state and "
                "set_state), such as rs.LearningRateScheduler."
            )
    doc, source = find_envelope(path, step=step)
    if doc is None:
        warn_no_state(repr(source))
        return 0
    states = doc[snapshot.CALLBACKS]
    arrays = {}
    if any(hasattr(cb, "set_arrays") and cb.state_key in states for cb in callbacks):
        from resumable_scheduler.storage.arrays import read_arrays

        arrays = read_arrays(source)
    from resumable_scheduler.tracker import distinct_keys

    distinct_keys(callbacks)  # two schedulers: "LearningRateScheduler", "...#2"
    # The states of our own callbacks were validated when the file was read;
    # each set_state validates its own state and changes nothing if it is invalid.
    for cb in callbacks:
        if cb.state_key in states:
            try:
                cb.set_state(states[cb.state_key])
                if arrays.get(cb.state_key) and hasattr(cb, "set_arrays"):
                    cb.set_arrays(arrays[cb.state_key])
            except ValueError as e:
                raise ValueError(f"Invalid state of `callbacks.{short_name(cb.state_key)}` in {source!r}: {e}") from None
    # Position and epochs were checked when the envelope was read (integers
    # from 0 to MAX_INT).
    return Snapshot.from_document(doc, where=str(source)).resume_epoch()
