"""Storage back ends: each reads the resumable-state envelope from one layout.

`find_envelope(path)` tries them in turn: a `.weights.h5` file, a `.keras`
archive, a backup directory (ours or stock Keras's; also a bucket prefix,
any fsspec URL, see `storage.store`), an Orbax directory.

Every reader treats the file as untrusted input: anything malformed (a
crafted file can carry a matching CRC) is a `ValueError` that names the file
and the field, with bounded text; nothing in a file is executed (no pickle,
no eval, no object dtypes) and nothing on disk is changed by reading.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from resumable_scheduler import snapshot
from resumable_scheduler.storage import h5

#: The states of this package's callbacks, validated as soon as a checkpoint
#: is read (before any of it is applied), so that a bad one is reported with
#: the file it came from: state key -> (module, class with `from_dict`).
KNOWN_STATES = {
    "LearningRateScheduler": ("resumable_scheduler.state", "ScheduleState"),
    "EarlyStopping": ("resumable_scheduler.monitor_state", "EarlyStoppingState"),
    "ReduceLROnPlateau": ("resumable_scheduler.monitor_state", "PlateauState"),
}


def check_states(doc: dict[str, Any], where: str) -> None:
    """Validates the states of our callbacks in an envelope; a bad one is a
    `ValueError` naming `where` and the callback (its message names the field)."""
    callbacks = doc[snapshot.CALLBACKS]
    for key, (module, cls) in KNOWN_STATES.items():
        if key in callbacks:
            try:
                getattr(importlib.import_module(module), cls).from_dict(callbacks[key])
            except ValueError as e:
                raise ValueError(f"Invalid state of `callbacks.{key}` in {where!r}: {e}") from None


def layout_of(path: str) -> str:
    """What `path` holds: "keras", "h5", "backup" or "orbax".

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a checkpoint layout we know.
    """
    from resumable_scheduler.storage.store import is_url

    if is_url(path):
        # A bucket prefix (any fsspec URL): a backup_dir of rs.BackupAndRestore.
        from resumable_scheduler.storage import backup_dir

        if backup_dir.is_backup_dir(path):
            return "backup"
        raise FileNotFoundError(
            f"No checkpoint at path={path!r}: no rs.BackupAndRestore checkpoint "
            "(ckpt-*.weights.h5) or stock backup under that prefix. Only backup "
            "directories are read from URLs."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at path={path!r}: it does not exist.")
    if os.path.isdir(path):
        from resumable_scheduler.storage import backup_dir

        if backup_dir.is_backup_dir(path):
            return "backup"
        from resumable_scheduler.storage import orbax_dir

        if orbax_dir.is_orbax_dir(path):
            return "orbax"
        raise ValueError(
            f"Invalid value for argument `path`. Received: path={path!r}, a "
            "directory with no checkpoint we know. Expected a .keras file, a "
            ".weights.h5 file, a BackupAndRestore backup_dir or an Orbax directory."
        )
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(".h5"):
        return "h5"
    raise ValueError(
        f"Invalid value for argument `path`. Received: path={path!r}. Expected a "
        ".keras file, a .weights.h5 file, a BackupAndRestore backup_dir or an "
        "Orbax directory."
    )


#: How each layout without steps is named in messages.
DESCRIPTIONS = {"keras": "a .keras file", "h5": "a .weights.h5 file", "backup": "a backup directory"}


def find_envelope(path: str | os.PathLike[str], step: int | None = None) -> tuple[dict[str, Any] | None, str]:
    """Returns `(envelope or None, description of what was read)`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a checkpoint layout we know, is unreadable
            or invalid, or `step` is given for a layout without steps (only
            Orbax directories have them).
    """
    path = os.fspath(path)
    layout = layout_of(path)
    if step is not None and layout != "orbax":
        raise ValueError(
            f"Invalid value for argument `step`. Received: step={step!r}, but {path!r} "
            f"is {DESCRIPTIONS[layout]}, which holds one state: only Orbax "
            "directories have steps."
        )
    if layout == "backup":
        from resumable_scheduler.storage import backup_dir

        return backup_dir.read_envelope(path)  # validated by read_checkpoint
    if layout == "orbax":
        from resumable_scheduler.storage import orbax_dir

        doc, source = orbax_dir.read_envelope(path, step=step)
    elif layout == "keras":
        doc, source = h5.read_envelope_keras(path), path
    else:
        doc, source = h5.read_envelope_h5(path), path
    if doc is not None:
        check_states(doc, source)
    return doc, source
