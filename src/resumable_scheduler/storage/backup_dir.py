"""Backup directories: ours (one self-contained `.weights.h5` per commit) and
stock Keras's.

Our layout::

    backup_dir/
      .lock
      ckpt-00000041-5e1f09aa.weights.h5   # previous (kept if double_checkpoint)
      ckpt-00000042-0b77c3d2.weights.h5   # newest

Each file is an ordinary Keras weights file (`model.load_weights` reads it)
whose `_resumable_scheduler_state` group also holds the position, the RNG
scalars (JSON envelope) and the RNG keys, seed generators and metric
accumulators (`training::*` datasets). The hex field is the CRC-32 of the
whole file, so a truncated or garbled file is detected before use. Files
are committed atomically (`storage.atomic.commit_file`).

Stock layout: `latest.weights.h5` (+ `.bkp`) and `training_metadata.json`; our
state rides inside `latest.weights.h5` when `rs.LearningRateScheduler` ran.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import h5py
import numpy as np

from resumable_scheduler.protocol import decode_envelope
from resumable_scheduler.storage import atomic, h5
from resumable_scheduler.tracker import ATTR, DATASET, TRAINING_PREFIX

STOCK_WEIGHTS = "latest.weights.h5"
SUFFIX = ".weights.h5"
_NAME = re.compile(r"^ckpt-(\d{8})-([0-9a-f]{8})\.weights\.h5$")


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint file, read and verified."""

    path: str
    doc: dict[str, Any]  # the envelope: callbacks, position, rng
    arrays: dict[str, np.ndarray]  # the training::* datasets, prefix removed

    @property
    def weights_path(self) -> str:
        return self.path


def list_checkpoints(directory: str) -> list[str]:
    """Committed checkpoint files, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [os.path.join(directory, n) for n in names]


def _seq(path: str) -> int:
    return int(_NAME.match(os.path.basename(path)).group(1))


def crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def commit(directory: str, save: Callable[[str], None]) -> str:
    """Writes a new checkpoint with `save(path)` and commits it atomically."""
    existing = list_checkpoints(directory)
    seq = _seq(existing[-1]) + 1 if existing else 0
    return atomic.commit_file(
        os.path.join(directory, f"ckpt-{seq:08d}"),
        SUFFIX,
        save,
        lambda tmp: f"ckpt-{seq:08d}-{crc32(tmp):08x}{SUFFIX}",
    )


def read_checkpoint(path: str) -> Checkpoint:
    """Reads and verifies one file; raises `ValueError` naming it if bad."""
    m = _NAME.match(os.path.basename(path))
    if m is None:
        raise ValueError(f"Not a checkpoint file name: {path!r}.")
    try:
        actual = crc32(path)
    except OSError as e:
        raise ValueError(f"Unreadable checkpoint file {path!r}: {e}") from None
    if actual != int(m.group(2), 16):
        raise ValueError(
            f"Corrupt checkpoint file {path!r}: its CRC-32 is {actual:08x}, its "
            f"name says {m.group(2)} (truncated or garbled)."
        )
    try:
        with h5py.File(path, "r") as f:
            group = f[f"{ATTR}/vars"]
            doc = decode_envelope(np.asarray(group[DATASET], dtype=np.uint8).tobytes())
            arrays = {
                k[len(TRAINING_PREFIX):]: np.asarray(group[k])
                for k in group.keys() if k.startswith(TRAINING_PREFIX)
            }
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"Unreadable checkpoint file {path!r}: {e}") from None
    for key in ("position", "rng"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"Unreadable checkpoint file {path!r}: no valid `{key}` entry.")
    pos = doc["position"]
    for key in ("epoch", "batch", "step"):
        v = pos.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(
                f"Invalid value for field `position.{key}` in {path!r}. "
                f"Received: {key}={v!r}. Expected an integer >= 0."
            )
    return Checkpoint(path=path, doc=doc, arrays=arrays)


def prune(directory: str, keep: int) -> None:
    """Deletes all but the newest `keep` checkpoint files."""
    for path in list_checkpoints(directory)[:-keep]:
        os.remove(path)


def is_backup_dir(path: str) -> bool:
    return bool(list_checkpoints(path)) or os.path.exists(os.path.join(path, STOCK_WEIGHTS))


def read_envelope(path: str) -> tuple[dict[str, Any] | None, str]:
    """The newest readable envelope in a backup directory (ours or stock)."""
    errors = []
    for ckpt in reversed(list_checkpoints(path)):
        try:
            c = read_checkpoint(ckpt)
        except ValueError as e:
            errors.append(str(e))
            continue
        return c.doc, c.path
    if errors:
        raise ValueError("No readable checkpoint in backup_dir: " + "; ".join(errors))
    weights = os.path.join(path, STOCK_WEIGHTS)
    return h5.read_envelope_h5(weights), weights
