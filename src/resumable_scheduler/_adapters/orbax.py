"""Orbax's private file-layout names (pinned by the adapter tests).

- `STEP_METADATA`: the file that marks a finished step folder
  (`orbax.checkpoint._src.metadata.checkpoint._STEP_METADATA_FILENAME`).
- `TMP_SUFFIX`: the suffix of a step folder still being written
  (`orbax.checkpoint._src.path.atomicity_types.TMP_DIR_SUFFIX`).

This module does not import Orbax.
"""

from __future__ import annotations

STEP_METADATA = "_CHECKPOINT_METADATA"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
