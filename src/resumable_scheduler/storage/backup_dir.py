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

import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from resumable_scheduler import rng
from resumable_scheduler.protocol import decode_envelope, short_name
from resumable_scheduler.storage import atomic, check_states, h5
from resumable_scheduler.tracker import TRAINING_PREFIX

STOCK_WEIGHTS = "latest.weights.h5"
SUFFIX = ".weights.h5"
#: `ckpt-<number>-<crc32>.weights.h5`: the number has 8 digits, more once it
#: passes 99,999,999 (never a leading zero then), and files sort by it as a
#: number, not as text.
_NAME = re.compile(r"^ckpt-(\d{8}|[1-9]\d{8,})-([0-9a-f]{8})\.weights\.h5$")


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
    numbered = sorted(
        (int(m.group(1)), n) for n in os.listdir(directory) if (m := _NAME.match(n))
    )
    return [os.path.join(directory, n) for _, n in numbered]


def _seq(path: str) -> int:
    return int(_NAME.match(os.path.basename(path)).group(1))


def crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class _Buffer(io.BytesIO):
    """The in-memory file a checkpoint is written into before it goes to disk.

    Keras's `save_weights` takes it in place of a path (it checks the name
    through `str()`, which gives the temporary's path, and writes HDF5 into
    any `io.BytesIO`). So HDF5 never sees a failed disk write: one that fails
    (a full disk, a file-size limit) leaves HDF5 holding objects it cannot
    flush, and h5py crashes the interpreter at exit trying. The bytes are
    written to disk by `commit` instead, where a failure is a plain
    `OSError`. The cost is one copy of the checkpoint in memory, as Keras's
    own `.keras` saving has.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def __str__(self) -> str:
        return self._path


def commit(directory: str, save: Callable[[Any], None]) -> str:
    """Writes a new checkpoint with `save(target)` and commits it atomically.

    `target` is an in-memory file whose `str()` is the temporary's path
    (`model.save_weights` takes it); its bytes are then written to the
    temporary, fsynced and renamed into place. A failure anywhere leaves no
    new file and raises; a failed disk write is an `OSError` that names
    `directory`.
    """
    existing = list_checkpoints(directory)
    seq = _seq(existing[-1]) + 1 if existing else 0

    def write(tmp: str) -> None:
        buffer = _Buffer(tmp)
        try:
            save(buffer)
            try:
                with open(tmp, "xb") as f, buffer.getbuffer() as view:
                    f.write(view)
            except OSError as e:
                reason = " ".join(str(e.strerror or e).split())[:300]
                raise OSError(
                    e.errno,
                    f"Cannot write a checkpoint to backup_dir={directory!r}: {reason}. "
                    "Nothing was committed; the checkpoints already there are unchanged.",
                ) from None
        finally:
            buffer.close()

    return atomic.commit_file(
        os.path.join(directory, f"ckpt-{seq:08d}"),
        SUFFIX,
        write,
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
        raise ValueError(f"Unreadable checkpoint file {path!r}: {short_name(e, 300)}") from None
    if actual != int(m.group(2), 16):
        raise ValueError(
            f"Corrupt checkpoint file {path!r}: its CRC-32 is {actual:08x}, its "
            f"name says {m.group(2)} (truncated or garbled)."
        )
    size = h5.file_size(path, path)
    with h5.open_h5(path) as f:
        group = h5.state_group(f, path)
        if group is None:
            raise ValueError(f"Unreadable checkpoint file {path!r}: no `{h5.GROUP}/envelope` dataset.")
        doc = decode_envelope(h5.envelope_bytes(group, path, size), where=path)
        try:
            names = [k for k in group.keys() if k.startswith(TRAINING_PREFIX)]
        except Exception as e:  # noqa: BLE001 - h5py raises many types on damaged files
            raise ValueError(f"Unreadable checkpoint file {path!r}: {type(e).__name__}: {short_name(e, 300)}") from None
        arrays = {k[len(TRAINING_PREFIX):]: h5.read_array(group, k, path, size) for k in names}
    for key in ("position", "rng"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"Unreadable checkpoint file {path!r}: no valid `{key}` entry.")
    check_states(doc, path)
    rng.check_host_rng(doc["rng"], arrays, where=path, array_field=TRAINING_PREFIX)
    if doc["position"]["batch"] or "rng_now" in doc:
        rng.check_host_rng(doc.get("rng_now"), arrays, prefix="now_", where=path, array_field=TRAINING_PREFIX)
    rng.check_seed_generator_arrays(arrays, where=path, array_field=TRAINING_PREFIX)
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
    doc = h5.read_envelope_h5(weights)
    if doc is not None:
        check_states(doc, weights)
    return doc, weights
