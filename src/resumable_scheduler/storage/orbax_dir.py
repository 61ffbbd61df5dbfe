"""Orbax checkpoint directories: the layout `rs.OrbaxCheckpoint` writes, and
reading the resumable state back (for `rs.read_state`, `rs.restore`,
`resumable-scheduler inspect`).

One step folder per checkpoint, written by Orbax (a temporary renamed into
place once every process has finished, so a step folder is complete or
absent)::

    directory/
      120/                      # step = global batch index at the save
        pytree/                 # the model state tree, as stock Keras writes it
        model_config/           # the model config (unless save_weights_only)
        resumable_state/        # JSON: position, RNG scalars, callback states
        resumable_arrays/       # RNG keys, seed generators, metric accumulators
        (Orbax's step metadata file; see _adapters.orbax)

`pytree` and `model_config` are exactly what `keras.callbacks.OrbaxCheckpoint`
writes, so `keras.models.load_model(directory)` reads our directories too.
A directory written by the stock callback has no `resumable_state`: reading
it gives `(None, step path)`, which `read_state` reports as "no state".

Orbax is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from resumable_scheduler._adapters import orbax as _orbax_names
from resumable_scheduler import snapshot
from resumable_scheduler.snapshot import decode_envelope

PYTREE = "pytree"
MODEL_CONFIG = "model_config"
ASSETS = "assets"
STATE = "resumable_state"
ARRAYS = "resumable_arrays"
#: Orbax's own (private) names: see `resumable_scheduler._adapters.orbax`.
STEP_METADATA = _orbax_names.STEP_METADATA
TMP_SUFFIX = _orbax_names.TMP_SUFFIX
_MISSING = (
    "Orbax checkpoints need the `orbax-checkpoint` package, which is not installed: "
    "pip install orbax-checkpoint"
)


def import_orbax() -> Any:
    """Returns `orbax.checkpoint`, or raises an ImportError that says what to install."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e}).") from None
    return ocp


def context() -> Any:
    """An Orbax v1 `Context` that saves the `resumable_state` item as JSON."""
    v1 = import_orbax().v1
    registry = v1.handlers.local_registry()
    registry.add(v1.handlers.JsonHandler, checkpointable_name=STATE)
    ctx = v1.Context()
    ctx.checkpointables.registry = registry
    return ctx


def is_orbax_dir(path: str) -> bool:
    """True if `path` holds Orbax step folders (complete or not), or is one."""
    return is_step_dir(path) or any(
        (name.isdigit() or TMP_SUFFIX in name) and os.path.isdir(os.path.join(path, name))
        for name in os.listdir(path)
    )


def is_step_dir(path: str) -> bool:
    """True if `path` is one complete step folder (such as `directory/120`)."""
    return os.path.basename(os.path.normpath(path)).isdigit() and os.path.exists(
        os.path.join(path, STEP_METADATA)
    )


def complete_steps(path: str) -> list[int]:
    """The steps Orbax finished writing, oldest first (temporaries excluded)."""
    ocp = import_orbax()
    return sorted(ocp.path.step.checkpoint_steps(path))


def step_path(path: str, step: int) -> str:
    return os.path.join(path, str(int(step)))


def resolve_step(path: str, step: int | None = None) -> int:
    """`step`, checked to be complete, or the newest complete one.

    Raises:
        ValueError: no complete step, or `step` is not one of them.
    """
    steps = complete_steps(path)
    if not steps:
        raise ValueError(f"No complete Orbax checkpoint step in {path!r}.")
    if step is None:
        return steps[-1]
    if isinstance(step, bool) or not isinstance(step, int) or step not in steps:
        shown = ", ".join(map(str, steps[-10:]))
        raise ValueError(
            f"Invalid value for argument `step`. Received: step={step!r}: no complete "
            f"checkpoint step {step!r} in {path!r}. Expected one of: {shown}."
        )
    return step


def check_doc(doc: Any, where: str) -> dict[str, Any]:
    """Validates a `resumable_state` item; returns it as an envelope dict."""
    try:
        doc = decode_envelope(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Unreadable resumable state in {where!r}: {e}") from None
    snapshot.require(doc, where, "Unreadable resumable state in")
    return doc


def saved_items(path: str, step: int) -> set[str]:
    """The names of the checkpointables saved at `step`."""
    p = step_path(path, step)
    return {n for n in os.listdir(p) if os.path.isdir(os.path.join(p, n))}


def read_state_item(path: str, step: int) -> dict[str, Any] | None:
    """The validated `resumable_state` of `step`, or None if it has none (stock)."""
    if STATE not in saved_items(path, step):
        return None
    v1 = import_orbax().v1
    where = os.path.join(step_path(path, step), STATE)
    try:
        with context():
            loaded = v1.load_checkpointables(step_path(path, step), {STATE: None})
    except Exception as e:  # Orbax raises many types for damaged files
        raise ValueError(f"Unreadable resumable state in {where!r}: {type(e).__name__}: {e}") from None
    return check_doc(loaded[STATE], where)


def read_envelope(path: str, step: int | None = None) -> tuple[dict[str, Any] | None, str]:
    """The resumable state saved at `step` (default: the newest complete step).

    Returns `(envelope or None, the step folder read)`; None for a step
    written by stock `keras.callbacks.OrbaxCheckpoint`.

    Raises:
        ValueError: no complete step, no step `step`, or an unreadable state.
        ImportError: `orbax-checkpoint` is not installed.
    """
    path = os.fspath(path)
    if is_step_dir(path):  # a step folder itself: `step` may only repeat its number
        parent, name = os.path.split(os.path.normpath(path))
        if step is not None and step != int(name):
            raise ValueError(
                f"Invalid value for argument `step`. Received: step={step!r}, but "
                f"{path!r} is the folder of step {int(name)}."
            )
        return read_state_item(parent, int(name)), path
    s = resolve_step(path, step)
    return read_state_item(path, s), step_path(path, s)
