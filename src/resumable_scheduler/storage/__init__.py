"""Storage back ends: each reads the resumable-state envelope from one layout.

`find_envelope(path)` tries them in turn: a `.weights.h5` file, a `.keras`
archive, a backup directory (ours or stock Keras's), an Orbax directory.
"""

from __future__ import annotations

import os
from typing import Any

from resumable_scheduler.storage import h5


def find_envelope(path: str | os.PathLike[str], step: int | None = None) -> tuple[dict[str, Any] | None, str]:
    """Returns `(envelope or None, description of what was read)`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a checkpoint layout we know, or is unreadable.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at path={path!r}: it does not exist.")
    if os.path.isdir(path):
        from resumable_scheduler.storage import backup_dir

        if backup_dir.is_backup_dir(path):
            return backup_dir.read_envelope(path)
        from resumable_scheduler.storage import orbax_dir

        if orbax_dir.is_orbax_dir(path):
            return orbax_dir.read_envelope(path, step=step)
        raise ValueError(
            f"Invalid value for argument `path`. Received: path={path!r}, a "
            "directory with no checkpoint we know. Expected a .keras file, a "
            ".weights.h5 file, a BackupAndRestore backup_dir or an Orbax directory."
        )
    if path.endswith(".keras"):
        return h5.read_envelope_keras(path), path
    if path.endswith(".h5"):
        return h5.read_envelope_h5(path), path
    raise ValueError(
        f"Invalid value for argument `path`. Received: path={path!r}. Expected a "
        ".keras file, a .weights.h5 file, a BackupAndRestore backup_dir or an "
        "Orbax directory."
    )
