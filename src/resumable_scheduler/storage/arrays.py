"""Reading the arrays of resumable callbacks (beside their JSON states).

They live in the same HDF5 group as the envelope (see
`resumable_scheduler.tracker.ARRAY_PREFIX`), in every `.weights.h5` file and
`.keras` archive that Keras's saving wrote, backups included.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import h5py
import numpy as np

from resumable_scheduler.tracker import ATTR, split_arrays

_GROUP = f"{ATTR}/vars"


def _from_h5file(f: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    if _GROUP not in f:
        return {}
    group = f[_GROUP]
    return split_arrays(_Store(group))


class _Store:
    """The two methods of a Keras store that `split_arrays` uses."""

    def __init__(self, group: Any) -> None:
        self._group = group

    def keys(self) -> Any:
        return self._group.keys()

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self._group[key])


def read_arrays(source: str) -> dict[str, dict[str, np.ndarray]]:
    """Callback arrays by state key, from what `find_envelope` read.

    `source` is a `.weights.h5` file (a backup's or a `ModelCheckpoint`'s) or
    a `.keras` archive; anything else has no arrays (`{}`).
    """
    path = source
    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as zf:
                if "model.weights.h5" not in zf.namelist():
                    return {}
                data = zf.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as f:
                return _from_h5file(f)
        if path.endswith(".h5"):
            with h5py.File(path, "r") as f:
                return _from_h5file(f)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"Cannot read the arrays in {path!r}: {e}") from None
    return {}
