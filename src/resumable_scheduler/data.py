"""Data resumption: starting an epoch at batch `k` instead of 0.

Keras 3's `fit` always starts an epoch at batch 0. `skip_batches(k)` arranges
for the *next* training epoch that Keras starts to consume its first `k`
steps of data without training on them, keeping Keras's own step numbering
(callbacks see batches `k, k+1, ...`). With the host RNG restored to its
state at the start of the interrupted epoch, arrays (shuffled or not) and
`keras.utils.PyDataset` then yield exactly the batches the interrupted run
would have trained next.

Inputs whose position cannot be rebuilt this way (a plain Python generator,
`tf.data`, a torch `DataLoader`) get one warning, and the interrupted epoch
runs again from its first batch, as with stock Keras; everything else
(weights, optimizer, learning rates, RNG) is still restored exactly.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from resumable_scheduler import _keras_internals as ki


_ACTIVE: "_SkipPatch | None" = None


class _SkipPatch:
    """One-shot patch of `EpochIterator._enumerate_iterator` (class level).

    Only the first epoch iterator enumerated after `install`, inside `fit` of
    `model`, is affected; the patch removes itself on first use. A patch left
    behind by a `fit` that raised before its epoch started is dropped by the
    next `install`, and never acts outside its own model's `fit`.
    """

    def __init__(self, steps: int, on_unsupported: Callable[[Any], None],
                 after_skip: Callable[[], None] | None = None, model: Any = None) -> None:
        self.model = model
        self.steps = steps
        self.after_skip = after_skip
        self.on_unsupported = on_unsupported
        self.cls = ki.epoch_iterator_class()
        self.original = self.cls.__dict__["_enumerate_iterator"]
        self.active = False

    def install(self) -> None:
        global _ACTIVE
        if _ACTIVE is not None:
            _ACTIVE.uninstall()
        _ACTIVE = self
        patch = self

        def _enumerate_iterator(it: Any):
            patch.uninstall()
            inner = patch.original(it)
            if patch.model is not None and not ki.in_fit_of(patch.model):
                yield from inner  # a stale patch: not this model's fit
                return
            if not isinstance(it.data_adapter, ki.resumable_adapter_classes()):
                patch.on_unsupported(it.data_adapter)
                yield from inner
                return
            skipping = True
            for begin, end, iterator in inner:
                if begin < patch.steps:
                    for _ in range(begin, end + 1):
                        next(iterator)
                    continue
                if skipping and patch.after_skip is not None:
                    patch.after_skip()
                skipping = False
                yield begin, end, iterator

        self.cls._enumerate_iterator = _enumerate_iterator
        self.active = True

    def uninstall(self) -> None:
        global _ACTIVE
        if self.active:
            self.cls._enumerate_iterator = self.original
            self.active = False
        if _ACTIVE is self:
            _ACTIVE = None


def skip_batches(
    steps: int, after_skip: Callable[[], None] | None = None, model: Any = None
) -> _SkipPatch:
    """Makes the next training epoch start at batch `steps` (see module doc).

    `after_skip` runs once the skipped batches are consumed, right before the
    first batch is trained (to put back RNG state that training consumes).
    With `model`, only an epoch of that model's `fit` is affected.
    """

    def warn(adapter: Any) -> None:
        warnings.warn(
            f"The training input ({type(adapter).__name__}) cannot be positioned "
            f"at batch {steps}: a Python generator or streaming input has no "
            "restorable position. The interrupted epoch runs again from its first "
            "batch (as with stock Keras); weights, optimizer, learning rates and "
            "RNG are still restored.",
            UserWarning,
            stacklevel=2,
        )

    patch = _SkipPatch(steps, warn, after_skip, model)
    patch.install()
    return patch
