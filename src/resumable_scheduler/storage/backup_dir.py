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
whole file, so a truncated or garbled file is detected before use.

Everything here works over a `storage.store.Store` (a local directory or a
bucket): numbering, verification, "the newest usable checkpoint, with
fallback" (`newest_usable`, written once), commit and pruning. The store
only publishes, lists, reads and deletes objects. The path-taking helpers
(`list_checkpoints`, `read_checkpoint`, `read_envelope`) are the same over
a `LocalStore`.

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

import h5py
import numpy as np

from resumable_scheduler import rng, snapshot
from resumable_scheduler.snapshot import TRAINING_PREFIX, decode_envelope, short_name
from resumable_scheduler.storage import check_states, h5
from resumable_scheduler.storage.store import Store, is_url, store_for

STOCK_WEIGHTS = "latest.weights.h5"
SUFFIX = ".weights.h5"
#: `ckpt-<number>-<crc32>.weights.h5`: the number has 8 digits, more once it
#: passes 99,999,999 (never a leading zero then), and files sort by it as a
#: number, not as text.
_NAME = re.compile(r"^ckpt-(\d{8}|[1-9]\d{8,})-([0-9a-f]{8})\.weights\.h5$")


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint, read and verified."""

    path: str  # where it is (a path or a URL), for messages
    doc: dict[str, Any]  # the envelope: callbacks, position, rng
    arrays: dict[str, np.ndarray]  # the training::* datasets, prefix removed
    data: bytes = b""  # the whole file, for `model.load_weights(ckpt.weights())`

    @property
    def weights_path(self) -> str:
        return self.path

    def weights(self) -> "_Buffer":
        """An in-memory file `model.load_weights` reads (its `str()` is the
        checkpoint's base name, which Keras checks for `.weights.h5`; never a
        URL, which Keras would try to copy through TensorFlow)."""
        return _Buffer(self.path.rstrip("/").rsplit("/", 1)[-1], self.data)


def _number(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def checkpoint_names(store: Store) -> list[str]:
    """Committed checkpoint names in `store`, oldest first (by number)."""
    numbered = sorted((n, name) for name in store.names() if (n := _number(name)) is not None)
    return [name for _, name in numbered]


def list_checkpoints(directory: str) -> list[str]:
    """Committed checkpoint files of a local directory, oldest first."""
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in checkpoint_names(store_for(directory))]


def _seq(path: str) -> int:
    return int(_NAME.match(os.path.basename(path)).group(1))


def crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class _Buffer(io.BytesIO):
    """The in-memory file a checkpoint is written into, or read from.

    Keras's `save_weights` and `load_weights` take it in place of a path
    (they check the name through `str()` and read or write HDF5 in any
    `io.BytesIO`). So HDF5 never sees a failed disk write: one that fails
    (a full disk, a file-size limit) leaves HDF5 holding objects it cannot
    flush, and h5py crashes the interpreter at exit trying. The bytes are
    published by the store instead, where a failure is a plain `OSError`.
    The cost is one copy of the checkpoint in memory, as Keras's own
    `.keras` saving has.
    """

    def __init__(self, path: str, data: bytes = b"") -> None:
        super().__init__(data)
        self._path = path

    def __str__(self) -> str:
        return self._path


def commit(store: Store | str, save: Callable[[Any], None]) -> str:
    """Writes a new checkpoint with `save(target)` and publishes it atomically.

    `target` is an in-memory file whose `str()` ends in `.weights.h5`
    (`model.save_weights` takes it); its bytes are then committed by the
    store under `ckpt-<next number>-<crc32>.weights.h5`. A failure anywhere
    leaves no new checkpoint and raises. Returns the new name.
    """
    store = store_for(store) if isinstance(store, str) else store
    existing = checkpoint_names(store)
    seq = _number(existing[-1]) + 1 if existing else 0
    buffer = _Buffer(f"ckpt-{seq:08d}{SUFFIX}")  # a name, never a URL (see `weights`)
    try:
        save(buffer)
        data = buffer.getvalue()
    finally:
        buffer.close()
    name = f"ckpt-{seq:08d}-{zlib.crc32(data):08x}{SUFFIX}"
    store.commit(name, data)
    return name


def read_checkpoint_data(where: str, data: bytes) -> Checkpoint:
    """Verifies and reads one checkpoint's bytes; `where` is its path or URL
    (its base name carries the CRC). Raises `ValueError` naming it if bad."""
    m = _NAME.match(where.rstrip("/").rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"Not a checkpoint file name: {where!r}.")
    actual = zlib.crc32(data)
    if actual != int(m.group(2), 16):
        raise ValueError(
            f"Corrupt checkpoint file {where!r}: its CRC-32 is {actual:08x}, its "
            f"name says {m.group(2)} (truncated or garbled)."
        )
    size = len(data)
    with io.BytesIO(data) as raw, h5.open_h5(raw, where) as f:
        group = h5.state_group(f, where)
        if group is None:
            raise ValueError(f"Unreadable checkpoint file {where!r}: no `{h5.GROUP}/envelope` dataset.")
        doc = decode_envelope(h5.envelope_bytes(group, where, size), where=where)
        try:
            names = [k for k in group.keys() if k.startswith(TRAINING_PREFIX)]
        except Exception as e:  # noqa: BLE001 - h5py raises many types on damaged files
            raise ValueError(f"Unreadable checkpoint file {where!r}: {type(e).__name__}: {short_name(e, 300)}") from None
        arrays = {k[len(TRAINING_PREFIX):]: h5.read_array(group, k, where, size) for k in names}
    position = snapshot.require(doc, where)
    check_states(doc, where)
    rng.check_host_rng(doc[snapshot.RNG], arrays, where=where, array_field=TRAINING_PREFIX)
    if position.batch or snapshot.RNG_NOW in doc:
        rng.check_host_rng(
            doc.get(snapshot.RNG_NOW), arrays, prefix=snapshot.NOW_PREFIX, where=where, array_field=TRAINING_PREFIX
        )
    rng.check_seed_generator_arrays(arrays, where=where, array_field=TRAINING_PREFIX)
    return Checkpoint(path=where, doc=doc, arrays=arrays, data=data)


def read_checkpoint(path: str) -> Checkpoint:
    """Reads and verifies one local file; raises `ValueError` naming it if bad."""
    if _NAME.match(os.path.basename(path)) is None:
        raise ValueError(f"Not a checkpoint file name: {path!r}.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"Unreadable checkpoint file {path!r}: {short_name(e, 300)}") from None
    return read_checkpoint_data(path, data)


def read_named(store: Store, name: str) -> Checkpoint:
    """Reads and verifies the checkpoint `name` of `store`."""
    where = store.describe(name)
    try:
        data = store.read(name)
    except OSError as e:
        raise ValueError(f"Unreadable checkpoint file {where!r}: {short_name(e, 300)}") from None
    return read_checkpoint_data(where, data)


def newest_usable(store: Store) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint of `store` that reads and verifies, and the
    errors of the newer ones that did not (oldest last). `(None, errors)`
    when none is usable; `(None, [])` when there is none."""
    errors: list[str] = []
    for name in reversed(checkpoint_names(store)):
        try:
            return read_named(store, name), errors
        except ValueError as e:
            errors.append(str(e))
    return None, errors


def amend(store: Store, items: dict[str, Any]) -> str | None:
    """Commits a copy of the newest checkpoint whose envelope has `items`
    set (the weights, arrays and every other item byte for byte the same),
    so that the newest checkpoint says something learned after it was
    written (how its process ended). Returns the new name, or None when
    there is no checkpoint. The copy is committed like any other, then the
    original is deleted (the one before it, if kept, stays the fallback)."""
    names = checkpoint_names(store)
    if not names:
        return None
    ckpt = read_named(store, names[-1])  # verified before it is copied
    doc = {**ckpt.doc, **items}
    extra = {k: v for k, v in doc.items() if k not in ("format", "version", snapshot.CALLBACKS)}
    envelope = snapshot.encode_envelope(doc[snapshot.CALLBACKS], extra)
    with io.BytesIO(ckpt.data) as raw:
        with h5py.File(raw, "r+") as f:
            group = f[h5.GROUP]
            del group[h5.DATASET]
            group.create_dataset(h5.DATASET, data=np.frombuffer(envelope, dtype=np.uint8))
        amended = raw.getvalue()
    name = commit(store, lambda target: target.write(amended))
    store.delete(names[-1])
    return name


def prune(store: Store | str, keep: int) -> None:
    """Deletes all but the newest `keep` checkpoints (call after a commit:
    the newest, just written, is never deleted)."""
    store = store_for(store) if isinstance(store, str) else store
    for name in checkpoint_names(store)[:-keep]:
        store.delete(name)


def _settled_store(path: str) -> Store:
    """The store at `path`, once a background write to it that this process
    left running (a `fit` that raised) is finished: a reader in the same
    process sees what that `fit` committed."""
    import sys

    store = store_for(path)
    # No background write can be pending unless the module was loaded.
    background = sys.modules.get("resumable_scheduler.storage.background")
    if background is not None:
        background.join_for(getattr(store, "directory", store.location))
    return store


def is_backup_dir(path: str) -> bool:
    store = _settled_store(path)
    return bool(checkpoint_names(store)) or store.exists(STOCK_WEIGHTS)


def read_envelope(path: str) -> tuple[dict[str, Any] | None, str]:
    """The newest readable envelope in a backup directory or bucket prefix
    (ours or stock)."""
    store = _settled_store(path)
    ckpt, errors = newest_usable(store)
    if ckpt is not None:
        return ckpt.doc, ckpt.path
    if errors:
        raise ValueError("No readable checkpoint in backup_dir: " + "; ".join(errors))
    weights = store.describe(STOCK_WEIGHTS)
    if is_url(path):
        doc = h5.read_envelope_h5_bytes(store.read(STOCK_WEIGHTS), weights)
    else:
        doc = h5.read_envelope_h5(weights)
    if doc is not None:
        check_states(doc, weights)
    return doc, weights
