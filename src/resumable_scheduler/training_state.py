"""Everything besides the variables that decides what training does next.

`capture()` gathers, at one instant, the position (epoch, batch, step), the
host RNGs, every Keras SeedGenerator, the metric accumulators of an epoch in
progress, and the state of every resumable callback of the model, as a
JSON-safe document plus a dict of NumPy arrays. `apply()` puts it back.
Every storage back end (backup folders, Orbax) stores this same pair beside
the model variables.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from resumable_scheduler import data, rng, snapshot
from resumable_scheduler.tracker import tracker_for

NOW = snapshot.NOW_PREFIX
HostRng = tuple[dict[str, Any], dict[str, np.ndarray]]


def capture(
    model: Any,
    epoch: int,
    batch: int,
    host_rng: HostRng | None = None,
    include_callbacks: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns `(doc, arrays)` for a checkpoint at batch `batch` of `epoch`.

    A mid-epoch checkpoint's `doc["input"]` records what its position
    depends on (batch size, number of samples or `len()`, steps per epoch;
    see `data.input_record`).

    `doc["callbacks"]` holds every resumable callback's state unless
    `include_callbacks` is False (for back ends where Keras's saving writes
    them already, through the model's tracker).

    `host_rng` is the host RNG state at the start of `epoch` (what re-creates
    its batch order); by default, the state now. The model must be synced
    (on JAX, read it through `callback.model`).
    """
    meta, arrays = host_rng if host_rng is not None else rng.capture_host_rng()
    arrays = dict(arrays)
    arrays.update(rng.capture_seed_generators(model))
    if batch:
        # Mid-epoch: the epoch-start RNG re-creates the batch order; the RNG
        # as it is now takes over once the trained batches are skipped.
        now_meta, now_arrays = rng.capture_host_rng(prefix=NOW)
        arrays.update(now_arrays)
        for i, v in enumerate(model.metrics_variables):
            arrays[f"metric_{i}"] = np.asarray(keras.ops.convert_to_numpy(v))
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) if model.optimizer else 0
    snap = snapshot.Snapshot(
        position=snapshot.Position(int(epoch), int(batch), step), rng=meta, arrays=arrays
    )
    if batch:
        snap.items[snapshot.RNG_NOW] = now_meta
        # What "batch `batch`" counts: a rerun with another batch size, data
        # length or steps per epoch must not resume this position (see
        # data.check_resumed_input). Absent outside a fit, and in older
        # checkpoints.
        snap.items[snapshot.INPUT] = data.input_record(model, int(batch))
    # The run's timeline up to this checkpoint (see timeline.py).
    snap.items[snapshot.TIMELINE] = tracker_for(model).timeline.commit(snap.position)
    if include_callbacks:
        snap.callbacks = tracker_for(model).collect()
    doc = snap.document(include_callbacks=include_callbacks)
    return doc, arrays


def apply_after_load(
    model: Any, doc: dict[str, Any], arrays: dict[str, np.ndarray], apply_callbacks: bool = True
) -> None:
    """After the variables are loaded: callback states (unless loading the
    variables through Keras did it already), seed generators, RNGs."""
    if apply_callbacks:
        tracker_for(model).apply(doc[snapshot.CALLBACKS])
    tracker_for(model).restore_timeline(doc)
    rng.restore_seed_generators(model, arrays)
    rng.restore_host_rng(doc[snapshot.RNG], arrays)


def restore_metrics(model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Puts back the metric accumulators of an epoch in progress (call after
    Keras resets them at the epoch's start)."""
    for i, v in enumerate(model.metrics_variables):
        key = f"metric_{i}"
        if key in arrays:
            v.assign(arrays[key])


def restore_rng_now(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Sets the host RNGs to their state at a mid-epoch checkpoint (call once
    the batches already trained have been skipped)."""
    if snapshot.RNG_NOW in doc:
        rng.restore_host_rng(doc[snapshot.RNG_NOW], arrays, prefix=NOW)
