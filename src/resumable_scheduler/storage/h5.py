"""Reading the envelope from `.weights.h5` files and `.keras` archives.

Keras itself writes it (see `resumable_scheduler.tracker`); here we only read,
with h5py and zipfile, without building a model.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import h5py
import numpy as np

from resumable_scheduler.protocol import decode_envelope
from resumable_scheduler.tracker import ATTR, DATASET

_KEY = f"{ATTR}/vars/{DATASET}"


def _from_h5file(f: h5py.File) -> dict[str, Any] | None:
    if _KEY not in f:
        return None
    return decode_envelope(np.asarray(f[_KEY], dtype=np.uint8).tobytes())


def read_envelope_h5(path: str) -> dict[str, Any] | None:
    """The envelope in a `.weights.h5` file, or None if it has none."""
    try:
        with h5py.File(path, "r") as f:
            return _from_h5file(f)
    except OSError as e:
        raise ValueError(f"Cannot read the HDF5 file {path!r}: {e}") from None


def read_envelope_keras(path: str) -> dict[str, Any] | None:
    """The envelope in a `.keras` archive (its `model.weights.h5`), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "model.weights.h5" not in names:
                return None
            data = zf.read("model.weights.h5")
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"Cannot read the .keras file {path!r}: {e}") from None
    with h5py.File(io.BytesIO(data), "r") as f:
        return _from_h5file(f)
