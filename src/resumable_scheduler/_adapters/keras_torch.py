"""Private Keras and torch internals that the torch `DataLoader` positioner
(`resumable_scheduler.data.torch_loader`) relies on, each pinned by
`tests/unit/test_adapters_torch.py`.

Only needed for the first epoch of a process in which the positioner was not
yet hooked into the loader (see `torch_loader`): the live loader iterator of
the running `fit` is found, and the index batches it has not served yet are
read (indices only) and handed back to it.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any


def torch_loader_adapter_class() -> type:
    """Keras's data adapter for `torch.utils.data.DataLoader` inputs."""
    from keras.src.trainers.data_adapters.torch_data_loader_adapter import TorchDataLoaderAdapter

    return TorchDataLoaderAdapter


def live_loader_iterator(adapter: Any) -> Any:
    """The DataLoader iterator that the running `fit` whose training input is
    `adapter` is reading (its `EpochIterator._current_iterator`), or None.

    Keras's `fit` keeps its training iterator in the local `epoch_iterator`.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit":
            it = frame.f_locals.get("epoch_iterator")
            if it is not None and getattr(it, "data_adapter", None) is adapter:
                return getattr(it, "_current_iterator", None)
        frame = frame.f_back
    return None


def take_unserved_batches(loader_iter: Any, batches: int) -> tuple[int, list[list[int]]]:
    """(batches the single-process DataLoader iterator `loader_iter` has
    served, the index batches it has still to serve of its `batches`).
    Reads only indices from its batch sampler (`_sampler_iter`), never past
    the last batch (a `RandomSampler` run to its end draws again), then
    gives them back to it, so it serves the same batches."""
    served = int(loader_iter._num_yielded)
    sampler_iter = loader_iter._sampler_iter
    rest = [list(b) for b in itertools.islice(sampler_iter, max(batches - served, 0))]
    loader_iter._sampler_iter = itertools.chain([list(b) for b in rest], sampler_iter)
    return served, rest


def draw_loader_base_seed(generator: Any) -> None:
    """What `iter(loader)` draws from `loader.generator` before its sampler
    starts (`_BaseDataLoaderIter.__init__`: `_base_seed`, one int64)."""
    import torch

    torch.empty((), dtype=torch.int64).random_(generator=generator)
