"""Positioner for `keras.utils.PyDataset` inputs: O(1) start at batch `k`.

Keras reads a finite `PyDataset` in the order `range(len)`, or, with
`shuffle=True`, in the order `random.shuffle(list(range(len)))` drawn from
Python's host RNG when the pass starts (in the data generator, or in the
`OrderedEnqueuer`'s thread with workers). `start_at` draws that order the
same way, consuming the host RNG exactly as an uninterrupted pass does (it
runs with the RNG of the pass's start, which the resume restored), and
makes the next pass request only `order[k:]`: `__getitem__` runs for the
batches the resumed epoch trains and for nothing else, with or without
workers or `use_multiprocessing`.

>>> import keras
>>> class Data(keras.utils.PyDataset):
...     def __len__(self): return 4
...     def __getitem__(self, i): return (np.full((1, 1), i, "float32"),)
>>> from resumable_scheduler._adapters import keras_pydataset as kp
>>> adapter = kp.pydataset_adapter_class()(Data())
>>> matches(adapter), capture(adapter, 2)
(True, None)
>>> start_at(adapter, 2, None)
>>> [float(b[0][0, 0]) for b in adapter.get_numpy_iterator()]
[2.0, 3.0]
>>> [float(b[0][0, 0]) for b in adapter.get_numpy_iterator()]  # Keras's own again
[0.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np  # noqa: F401 - used by the doctest

from resumable_scheduler._adapters import keras_pydataset as kp


def matches(adapter: Any) -> bool:
    """True for Keras's `PyDatasetAdapter` over a finite `PyDataset`."""
    return isinstance(adapter, kp.pydataset_adapter_class()) and adapter.num_batches is not None


def order(adapter: Any) -> list[int]:
    """The batch order of the pass starting now, drawn from the host RNG as
    Keras draws it (`random.shuffle` of `list(range(len))`, only with
    `shuffle=True`)."""
    indices = list(range(adapter.num_batches))
    if kp.adapter_shuffle(adapter):
        random.shuffle(indices)
    return indices


def start_at(adapter: Any, batch: int, state: Any) -> None:
    """The next pass of `adapter` starts at batch `batch` of its order (see
    the module doc); the order is drawn now, from the host RNG as it is."""
    kp.serve_from(adapter, order(adapter)[batch:])


def capture(adapter: Any, batch: int) -> Any:
    """Nothing: the host RNG of the pass's start (in the checkpoint) re-draws
    the order."""
    return None
