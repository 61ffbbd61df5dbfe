"""Reading the arrays of resumable callbacks (beside their JSON states).

They live in the same HDF5 group as the envelope (see
`resumable_scheduler.tracker.ARRAY_PREFIX`), in every `.weights.h5` file and
`.keras` archive that Keras's saving wrote, backups included.
"""

from __future__ import annotations

import io

from typing import Any

import numpy as np

from resumable_scheduler.storage import h5
from resumable_scheduler.tracker import split_arrays


def _from_h5file(f: Any, where: str, max_bytes: int) -> dict[str, dict[str, np.ndarray]]:
    group = h5.state_group(f, where)
    if group is None:
        return {}
    return split_arrays(_Store(group, where, max_bytes))


class _Store:
    """The two methods of a Keras store that `split_arrays` uses; every
    dataset is read by `h5.read_array` (plain numeric dtypes only)."""

    def __init__(self, group: Any, where: str, max_bytes: int) -> None:
        self._group = group
        self._where = where
        self._max_bytes = max_bytes

    def keys(self) -> Any:
        try:
            return list(self._group.keys())
        except Exception as e:  # noqa: BLE001 - h5py raises many types on damaged files
            raise ValueError(f"Cannot list `{h5.GROUP}` in {self._where!r}: {type(e).__name__}.") from None

    def __getitem__(self, key: str) -> np.ndarray:
        return h5.read_array(self._group, key, self._where, self._max_bytes)


def read_arrays(source: str) -> dict[str, dict[str, np.ndarray]]:
    """Callback arrays by state key, from what `find_envelope` read.

    `source` is a `.weights.h5` file (a backup's or a `ModelCheckpoint`'s) or
    a `.keras` archive; anything else has no arrays (`{}`). A malformed file
    is a `ValueError` naming it and the dataset.
    """
    from resumable_scheduler.storage.store import is_url, store_for

    if is_url(source) and source.endswith(".h5"):
        # A checkpoint object in a bucket: read its bytes through the store.
        parent, name = source.rsplit("/", 1)
        data = store_for(parent).read(name)
        with io.BytesIO(data) as raw, h5.open_h5(raw, source) as f:
            return _from_h5file(f, source, len(data))
    if source.endswith(".keras"):
        with h5.open_keras_weights(source) as (f, size):
            return {} if f is None else _from_h5file(f, source, size)
    if source.endswith(".h5"):
        with h5.open_h5(source) as f:
            return _from_h5file(f, source, h5.file_size(source, source))
    return {}
