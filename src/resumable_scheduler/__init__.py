"""resumable_scheduler: Keras training that resumes exactly after an interruption.

Users write ``import resumable_scheduler as rs`` and swap
``keras.callbacks.X`` for ``rs.X``.
"""

from resumable_scheduler.api import read_state, restore
from resumable_scheduler.callbacks.learning_rate_scheduler import LearningRateScheduler
from resumable_scheduler.protocol import Resumable
from resumable_scheduler.state import STATE_VERSION, ScheduleState

__version__ = "0.1.0"

__all__ = [
    "LearningRateScheduler",
    "Resumable",
    "STATE_VERSION",
    "ScheduleState",
    "read_state",
    "restore",
]
from resumable_scheduler.callbacks.backup_and_restore import (  # noqa: E402
    PREEMPTED_EXIT_CODE,
    BackupAndRestore,
)

__all__ += ["BackupAndRestore", "PREEMPTED_EXIT_CODE"]
from resumable_scheduler import lr_access, schedules  # noqa: E402
from resumable_scheduler.callbacks.early_stopping import EarlyStopping  # noqa: E402
from resumable_scheduler.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau  # noqa: E402
from resumable_scheduler.schedules import StepSchedule  # noqa: E402

__all__ += ["EarlyStopping", "ReduceLROnPlateau", "StepSchedule", "lr_access", "schedules"]
