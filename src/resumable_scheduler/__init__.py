"""resumable_scheduler: Keras training that resumes exactly after an interruption.

Users write ``import resumable_scheduler as rs`` and swap
``keras.callbacks.X`` for ``rs.X``.

Names are imported lazily, on first use: importing the package (or its CLI)
does not import Keras, so the CLI can choose the backend first.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS = {
    "BackupAndRestore": "resumable_scheduler.callbacks.backup_and_restore",
    "PREEMPTED_EXIT_CODE": "resumable_scheduler.callbacks.backup_and_restore",
    "EarlyStopping": "resumable_scheduler.callbacks.early_stopping",
    "LearningRateScheduler": "resumable_scheduler.callbacks.learning_rate_scheduler",
    "OrbaxCheckpoint": "resumable_scheduler.callbacks.orbax_checkpoint",
    "ReduceLROnPlateau": "resumable_scheduler.callbacks.reduce_lr_on_plateau",
    "Resumable": "resumable_scheduler.protocol",
    "STATE_VERSION": "resumable_scheduler.state",
    "ScheduleState": "resumable_scheduler.state",
    "StepSchedule": "resumable_scheduler.schedules",
    "goodput": "resumable_scheduler.costs",
    "read_state": "resumable_scheduler.api",
    "restore": "resumable_scheduler.api",
}
_SUBMODULES = ("lr_access", "schedules")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"resumable_scheduler.{name}")
    else:
        raise AttributeError(f"module 'resumable_scheduler' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


# `keras.models.load_model` finds our schedules (saved inside optimizer
# configs) only once their module has registered them. If Keras is already
# imported (its backend chosen), do it now; otherwise touching `rs.schedules`
# or any rs callback does it.
import sys as _sys  # noqa: E402

if "keras" in _sys.modules:
    importlib.import_module("resumable_scheduler.schedules")
