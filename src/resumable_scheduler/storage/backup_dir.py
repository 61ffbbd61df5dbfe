"""Backup directories: ours (atomic `ckpt-NNNNNNNN/` folders) and stock Keras's.

Our layout, one folder per commit (see `storage.atomic`)::

    backup_dir/
      .lock
      ckpt-00000041/          # previous (kept when double_checkpoint=True)
      ckpt-00000042/          # newest
        model.weights.h5      # model + optimizer variables + callback states
        arrays.npz            # RNG keys, seed generators, metric accumulators
        state.json            # position, RNG scalars, callback states, file CRCs

Stock layout: `latest.weights.h5` (+ `.bkp`) and `training_metadata.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from resumable_scheduler.protocol import decode_envelope, encode_envelope
from resumable_scheduler.storage import h5

STOCK_WEIGHTS = "latest.weights.h5"
STOCK_METADATA = "training_metadata.json"
WEIGHTS = "model.weights.h5"
ARRAYS = "arrays.npz"
STATE = "state.json"
_NAME = re.compile(r"^ckpt-(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint folder, read and verified."""

    path: str
    doc: dict[str, Any]  # the envelope, with "position" and "rng"
    arrays: dict[str, np.ndarray]

    @property
    def weights_path(self) -> str:
        return os.path.join(self.path, WEIGHTS)


def list_checkpoints(directory: str) -> list[str]:
    """Complete checkpoint folders, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [os.path.join(directory, n) for n in names]


def next_name(directory: str) -> str:
    existing = list_checkpoints(directory)
    seq = int(_NAME.match(os.path.basename(existing[-1])).group(1)) + 1 if existing else 0
    return os.path.join(directory, f"ckpt-{seq:08d}")


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_files(tmp: str, save_weights, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Writes one checkpoint's files into `tmp` (the atomic commit renames it)."""
    weights = os.path.join(tmp, WEIGHTS)
    save_weights(weights)
    with open(os.path.join(tmp, ARRAYS), "wb") as f:
        np.savez(f, **arrays)
    files = {}
    for name in (WEIGHTS, ARRAYS):
        p = os.path.join(tmp, name)
        files[name] = {"size": os.path.getsize(p), "crc32": _crc(p)}
    body = encode_envelope(doc["callbacks"], extra={k: v for k, v in doc.items() if k != "callbacks"} | {"files": files})
    with open(os.path.join(tmp, STATE), "wb") as f:
        f.write(body)


def read_checkpoint(path: str) -> Checkpoint:
    """Reads and verifies one folder; raises `ValueError` naming the bad file."""
    state = os.path.join(path, STATE)
    try:
        with open(state, "rb") as f:
            doc = decode_envelope(f.read())
    except (OSError, ValueError) as e:
        raise ValueError(f"Unreadable checkpoint file {state!r}: {e}") from None
    files = doc.get("files")
    if not isinstance(files, dict) or set(files) != {WEIGHTS, ARRAYS}:
        raise ValueError(f"Unreadable checkpoint file {state!r}: no valid `files` entry.")
    for name, meta in files.items():
        p = os.path.join(path, name)
        try:
            size, crc = os.path.getsize(p), _crc(p)
        except OSError as e:
            raise ValueError(f"Unreadable checkpoint file {p!r}: {e}") from None
        if not isinstance(meta, dict) or size != meta.get("size") or crc != meta.get("crc32"):
            raise ValueError(
                f"Corrupt checkpoint file {p!r}: size {size} / crc32 {crc} do not match "
                f"the recorded {meta!r} (truncated or garbled)."
            )
    for key in ("position", "rng"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"Unreadable checkpoint file {state!r}: no valid `{key}` entry.")
    pos = doc["position"]
    for key in ("epoch", "batch", "step"):
        v = pos.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(
                f"Invalid value for field `position.{key}` in {state!r}. "
                f"Received: {key}={v!r}. Expected an integer >= 0."
            )
    try:
        with np.load(os.path.join(path, ARRAYS), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"Unreadable checkpoint file {os.path.join(path, ARRAYS)!r}: {e}") from None
    return Checkpoint(path=path, doc=doc, arrays=arrays)


def prune(directory: str, keep: int) -> None:
    """Deletes all but the newest `keep` complete checkpoints."""
    for path in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


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
    meta = os.path.join(path, STOCK_METADATA)
    if doc is not None and os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            stock = json.load(f)
        if isinstance(stock, dict) and isinstance(stock.get("epoch"), int):
            doc["stock_metadata"] = stock
    return doc, weights
