"""Reading the envelope from `.weights.h5` files and `.keras` archives.

Keras itself writes it (see `resumable_scheduler.tracker`); here we only read,
with h5py and zipfile, without building a model.

A checkpoint file is input we do not trust: its CRC (in a backup's name)
catches accidents, not a crafted file. Every read here checks the type of
what it reads before reading it (the envelope is a 1-d `uint8` dataset, an
array is a plain numeric dataset: object, variable-length and compound
dtypes are refused, so nothing is ever unpickled), and every failure is a
`ValueError` that names the file and the dataset, with a bounded message.
Files are only ever opened for reading.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from resumable_scheduler.protocol import decode_envelope, short_name
from resumable_scheduler.tracker import ATTR, DATASET

GROUP = f"{ATTR}/vars"
_KEY = f"{GROUP}/{DATASET}"
#: The weights file inside a `.keras` archive.
KERAS_WEIGHTS = "model.weights.h5"


def _error_text(e: BaseException) -> str:
    """One bounded line for an exception from h5py or zipfile."""
    return short_name(" ".join(str(e).split()) or type(e).__name__, 300)


def read_array(group: Any, name: str, where: str, max_bytes: int | None = None) -> np.ndarray:
    """The dataset `name` of `group` as a NumPy array, if it is a plain
    numeric one (bool, int, uint or float); raises `ValueError` otherwise.

    Object, variable-length string, compound and reference dtypes are
    refused before any data is read, so nothing in the file is decoded
    beyond plain numbers. So is a dataset that claims more than `max_bytes`
    (the size of its file: Keras writes every byte it stores, while a crafted
    header could claim terabytes of fill value).
    """
    field = f"{group.name.lstrip('/')}/{name}"
    try:
        obj = group.get(name, getlink=False)
    except Exception as e:  # noqa: BLE001 - h5py raises many types on damaged files
        raise ValueError(f"Cannot read the dataset `{short_name(field)}` in {where!r}: {_error_text(e)}") from None
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(
            f"Invalid dataset `{short_name(field)}` in {where!r}: it is a "
            f"{type(obj).__name__}. Expected a numeric dataset."
        )
    dtype = obj.dtype
    if dtype.kind not in "biuf" or h5py.check_vlen_dtype(dtype) is not None or dtype.names is not None:
        raise ValueError(
            f"Invalid dataset `{short_name(field)}` in {where!r}: its dtype is "
            f"{short_name(dtype)}. Expected a plain numeric dtype (bool, int, uint or float)."
        )
    nbytes = int(np.prod(obj.shape, dtype=object)) * dtype.itemsize if obj.shape is not None else 0
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(
            f"Invalid dataset `{short_name(field)}` in {where!r}: shape {short_name(obj.shape)} "
            f"claims {nbytes} bytes, more than its file holds ({max_bytes} bytes)."
        )
    try:
        return np.asarray(obj[()])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"Cannot read the dataset `{short_name(field)}` in {where!r}: {_error_text(e)}") from None


def envelope_bytes(group: Any, where: str, max_bytes: int | None = None) -> bytes:
    """The JSON bytes of the envelope dataset in `group`."""
    arr = read_array(group, DATASET, where, max_bytes)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(
            f"Invalid dataset `{GROUP}/{DATASET}` in {where!r}: dtype {arr.dtype}, "
            f"shape {short_name(arr.shape)}. Expected a 1-d uint8 array (the JSON envelope)."
        )
    return arr.tobytes()


def state_group(f: h5py.File, where: str) -> Any | None:
    """The `_resumable_scheduler_state/vars` group, or None if the file has no envelope."""
    try:
        group = f.get(GROUP)
        if group is None or not isinstance(group, h5py.Group):
            if group is not None:
                raise ValueError(
                    f"Invalid entry `{GROUP}` in {where!r}: it is a {type(group).__name__}. "
                    "Expected an HDF5 group."
                )
            return None
        if DATASET not in group:
            return None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"Cannot read `{GROUP}` in {where!r}: {_error_text(e)}") from None
    return group


def _from_h5file(f: h5py.File, where: str, max_bytes: int) -> dict[str, Any] | None:
    group = state_group(f, where)
    if group is None:
        return None
    return decode_envelope(envelope_bytes(group, where, max_bytes), where=where)


def file_size(path: str, where: str) -> int:
    """The size of `path` in bytes (a `ValueError` naming `where` if unreadable)."""
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise ValueError(f"Cannot read the HDF5 file {where!r}: {_error_text(e)}") from None


@contextlib.contextmanager
def open_h5(path: str, where: str | None = None) -> Iterator[h5py.File]:
    """`h5py.File(path, "r")` (`path` may be a file object); an unreadable
    file is a `ValueError` naming `where`. The file is closed on every path."""
    where = where if where is not None else str(path)
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # noqa: BLE001 - OSError for garbage, others for odd files
        raise ValueError(f"Cannot read the HDF5 file {where!r}: {_error_text(e)}") from None
    try:
        yield f
    finally:
        f.close()


@contextlib.contextmanager
def open_keras_weights(path: str) -> Iterator[tuple[h5py.File | None, int]]:
    """The `model.weights.h5` inside a `.keras` archive, opened for reading
    (None if the archive has none), and its size in bytes; failures are
    `ValueError`s naming both."""
    try:
        with zipfile.ZipFile(path) as zf:
            if KERAS_WEIGHTS not in zf.namelist():
                data = None
            else:
                data = zf.read(KERAS_WEIGHTS)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as e:
        raise ValueError(f"Cannot read the .keras file {path!r}: {_error_text(e)}") from None
    if data is None:
        yield None, 0
        return
    with open_h5(io.BytesIO(data), where=f"{path}/{KERAS_WEIGHTS}") as f:
        yield f, len(data)


def read_envelope_h5(path: str) -> dict[str, Any] | None:
    """The envelope in a `.weights.h5` file, or None if it has none."""
    with open_h5(path) as f:
        return _from_h5file(f, path, file_size(path, path))


def read_envelope_h5_bytes(data: bytes, where: str) -> dict[str, Any] | None:
    """The envelope in the bytes of a `.weights.h5` file (read from a
    bucket), or None if it has none; `where` names it in errors."""
    with io.BytesIO(data) as raw, open_h5(raw, where) as f:
        return _from_h5file(f, where, len(data))


def read_envelope_keras(path: str) -> dict[str, Any] | None:
    """The envelope in a `.keras` archive (its `model.weights.h5`), or None."""
    with open_keras_weights(path) as (f, size):
        return None if f is None else _from_h5file(f, path, size)
