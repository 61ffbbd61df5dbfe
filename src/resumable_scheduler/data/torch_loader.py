"""Positioner for torch `DataLoader` inputs on the torch backend.

A map-style dataset read through torch's own samplers (`shuffle=True`, with
or without a seeded `generator`, or `shuffle=False`) is started at batch `k`
without loading a sample of the batches before it: the loader's batch
sampler drops the first `k * batch_size` indices before any is fetched.

The batch order of an epoch is decided when the loader's sampler starts
(`RandomSampler` draws its permutation from the loader's `generator`, or from
torch's global generator). A recorder put in place of the batch sampler's
`sampler` (a public attribute; its length and order are unchanged) keeps
that generator's state at each start; a mid-epoch checkpoint saves it, and
the resumed epoch's sampler starts from it again, so it draws the same
permutation and leaves the generator where the uninterrupted epoch left it.

The recorder is put in place the first time this module sees the loader (the
first mid-epoch checkpoint, or a resume). For the epoch running at that
moment, whose start it missed, the checkpoint saves instead the index
batches not served yet (read from the live loader iterator, indices only:
4 bytes a sample, that epoch only).

Not matched (they keep the documented rerun of the interrupted epoch, with
its one warning): iterable-style datasets, custom samplers or batch
samplers, `batch_size=None`, other backends. With `num_workers > 0` the
order and the samples are exact, but the workers' seeds (`base_seed`, drawn
when the loader iterator is made) are not restored, so randomness inside
`__getitem__` in workers differs in the resumed epoch; the first epoch of a
process (see above) is positioned only with `num_workers=0`.

>>> import torch
>>> enc = _encode_state(torch.Generator().manual_seed(0).get_state())
>>> bool(torch.equal(_decode_state(enc, "generator"), torch.Generator().manual_seed(0).get_state()))
True
>>> _decode_state("not base64!", "generator")
Traceback (most recent call last):
...
ValueError: Invalid value for field `input.reader.generator`: not a base64 torch generator state.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import sys
from typing import Any

FORMAT = 1


def _torch() -> Any:
    return sys.modules.get("torch")


class _Recorder:
    """Stands in for a `BatchSampler`'s `sampler`: same length, same order;
    records the RNG state its sampler starts from, and once (after
    `start_at`) starts from a saved state and drops the first indices."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.start: Any = None  # RNG state the running epoch's order came from
        self.order: list[int] | None = None  # or: its indices from `base` on
        self.base = 0
        self.pending: tuple[int, Any, Any, int] | None = None
        #: With `pending`: first replay the draws of the epoch that ended at
        #: the checkpoint (its order, then running out), from `pending`'s state.
        self.replay_epoch = False

    def __len__(self) -> int:
        return len(self.sampler)

    def _generator(self) -> Any:
        return getattr(self.sampler, "generator", None)

    def _rng_state(self) -> Any:
        gen = self._generator()
        if gen is not None:
            return gen.get_state()
        torch = _torch()
        if _draws_global(self.sampler):
            return torch.get_rng_state()
        return None

    def _set_rng_state(self, state: Any) -> None:
        gen = self._generator()
        if gen is not None:
            gen.set_state(state)
        elif state is not None:
            _torch().set_rng_state(state)

    def __iter__(self):
        pending, self.pending = self.pending, None
        if pending is None:
            self.start, self.order, self.base = self._rng_state(), None, 0
            yield from self.sampler
            return
        skip, state, order, base = pending
        if order is not None:  # the saved unserved indices, then the RNG as it was
            self.start, self.order, self.base = None, order, base
            if state is not None:
                self._set_rng_state(state)
            yield from order
            return
        self.start, self.order, self.base = state, None, 0
        keep = None
        if state is not None:
            if self._generator() is None:  # torch's global RNG: put it back after the draw
                keep = _torch().get_rng_state()
            self._set_rng_state(state)
            replay, self.replay_epoch = self.replay_epoch, False
            if replay:
                # From an epoch end: the base seed the next epoch's
                # `iter(loader)` drew before its sampler started.
                from resumable_scheduler._adapters import keras_torch

                keras_torch.draw_loader_base_seed(self._generator())
                self.start = self._rng_state()
        it = iter(self.sampler)
        first = list(itertools.islice(it, skip + 1))  # draws the order now; drops `skip`
        if keep is not None:
            _torch().set_rng_state(keep)
        yield from first[skip:]
        yield from it


def _draws_global(sampler: Any) -> bool:
    torch = _torch()
    return isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is None


def _loader(adapter: Any) -> Any:
    return adapter.get_torch_dataloader()


def matches(adapter: Any) -> bool:
    """True for Keras's torch `DataLoader` adapter on the torch backend, over
    a map-style dataset with torch's own `BatchSampler` over a
    `RandomSampler` or `SequentialSampler`. Puts the recorder in place."""
    if "keras" not in sys.modules:
        return False
    import keras

    if keras.backend.backend() != "torch":
        return False  # torch is not imported for other backends' inputs
    torch = _torch()
    if torch is None:
        return False
    from resumable_scheduler._adapters import keras_torch

    if not isinstance(adapter, keras_torch.torch_loader_adapter_class()):
        return False
    data = torch.utils.data
    loader = _loader(adapter)
    if isinstance(loader.dataset, data.IterableDataset) or not hasattr(loader.dataset, "__len__"):
        return False
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not data.BatchSampler:
        return False
    sampler = batch_sampler.sampler
    if isinstance(sampler, _Recorder):
        return True
    if type(sampler) is data.SequentialSampler:
        pass
    elif type(sampler) is data.RandomSampler:
        if sampler.replacement or sampler.num_samples != len(loader.dataset):
            return False
    else:
        return False
    batch_sampler.sampler = _Recorder(sampler)
    return True


def _encode_state(state: Any) -> str:
    return base64.b64encode(bytes(state.numpy().tobytes())).decode("ascii")


def _decode_state(text: Any, field: str) -> Any:
    torch = _torch()
    try:
        if not isinstance(text, str):
            raise ValueError
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        if not raw:
            raise ValueError
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise ValueError(
            f"Invalid value for field `input.reader.{field}`: not a base64 torch generator state."
        ) from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def _shape(loader: Any) -> dict[str, int]:
    return {"batch_size": int(loader.batch_size), "samples": len(loader.dataset), "batches": len(loader)}


def capture(adapter: Any, batch: int) -> Any:
    """JSON state for a checkpoint after `batch` batches of the running epoch:
    the RNG state its order came from (or the indices still to serve), and
    the loader's batch size and length. `batch=0` (an epoch-end checkpoint):
    what the next epoch's order is drawn from."""
    if not matches(adapter):
        return None
    loader = _loader(adapter)
    rec = loader.batch_sampler.sampler
    out: dict[str, Any] = {"format": FORMAT, **_shape(loader)}
    if batch == 0:
        # An epoch-end checkpoint: the generator as it is now. The next epoch
        # first makes its loader iterator (which draws a base seed from it),
        # then its sampler draws the order; the resume replays that draw.
        gen = rec._generator()
        if gen is not None:
            out["generator"] = _encode_state(gen.get_state())
            out["after_epoch"] = True
        else:
            out["generator"] = None
        return out
    if rec.start is None and rec.order is None and not isinstance(rec.sampler, _torch().utils.data.SequentialSampler):
        # The recorder missed this epoch's start: keep what is left of it.
        from resumable_scheduler._adapters import keras_torch

        live = keras_torch.live_loader_iterator(adapter)
        if live is None or loader.num_workers:
            return None
        served, rest = keras_torch.take_unserved_batches(live, len(loader))
        if served != batch:
            return None
        rec.order = [i for b in rest for i in b]
        rec.base = batch
    if rec.order is not None:
        import numpy as np

        gen = rec._generator()
        out["order"] = base64.b64encode(
            np.asarray(rec.order[(batch - rec.base) * loader.batch_size:], dtype="<i4").tobytes()).decode("ascii")
        out["generator"] = None if gen is None else _encode_state(gen.get_state())
    else:
        out["generator"] = None if rec.start is None else _encode_state(rec.start)
    return out


def _int_field(state: dict[str, Any], key: str) -> int:
    v = state.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"Invalid value for field `input.reader.{key}`: {v!r}; expected a non-negative integer.")
    return v


def start_at(adapter: Any, batch: int, state: Any) -> None:
    """Makes the next epoch's loader iterator serve batch `batch` first,
    without fetching a sample of the batches before it."""
    matches(adapter)
    loader = _loader(adapter)
    rec = loader.batch_sampler.sampler
    if state is None:
        if not isinstance(rec.sampler, _torch().utils.data.SequentialSampler) and rec._generator() is not None:
            raise ValueError(
                "Cannot resume this torch DataLoader exactly: the checkpoint holds no "
                "`input.reader` for it (its order cannot be rebuilt). Delete the checkpoint "
                "to start over.")
        rec.pending = (batch * loader.batch_size, None, None, 0)
        return
    if not isinstance(state, dict):
        raise ValueError(f"Invalid value for field `input.reader`: {type(state).__name__}; expected an object.")
    if state.get("format") != FORMAT:
        raise ValueError(f"Invalid value for field `input.reader.format`: {state.get('format')!r}; expected {FORMAT}.")
    old = {k: _int_field(state, k) for k in ("batch_size", "samples", "batches")}
    new = _shape(loader)
    changed = [f"{k}={old[k]} then, {new[k]} now" for k in ("batch_size", "samples") if old[k] != new[k]]
    if changed:
        raise ValueError(
            "Cannot resume the torch DataLoader at batch "
            f"{batch}: it is not the one the checkpoint was written with: " + "; ".join(changed)
            + ". Its position counts batches of that loader; rerun with "
            + ", ".join(f"{k}={old[k]}" for k in ("batch_size", "samples") if old[k] != new[k])
            + " or delete the checkpoint to start over.")
    gen_text = state.get("generator")
    gen_state = None if gen_text is None else _decode_state(gen_text, "generator")
    order = None
    if "order" in state:
        import numpy as np

        try:
            raw = base64.b64decode(str(state["order"]).encode("ascii"), validate=True)
            arr = np.frombuffer(raw, dtype="<i4")
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise ValueError("Invalid value for field `input.reader.order`: not base64 int32 indices.") from None
        if arr.size and (arr.min() < 0 or arr.max() >= new["samples"]):
            raise ValueError("Invalid value for field `input.reader.order`: an index outside the dataset.")
        rec.pending = (0, gen_state, [int(i) for i in arr], batch)
        return
    after = state.get("after_epoch", False)
    if not isinstance(after, bool) or (after and (batch or gen_state is None)):
        raise ValueError(f"Invalid value for field `input.reader.after_epoch`: {after!r:.100}.")
    rec.replay_epoch = after
    rec.pending = (batch * loader.batch_size, gen_state, None, 0)
