"""Positioner for grain inputs: `grain.MapDataset` and `grain.IterDataset`
given to `fit` resume at the first batch not yet trained, without reading the
batches before it (see `resumable_scheduler.data.Positioner`).

- A `MapDataset` (of batches) is started at batch `k` by slicing it,
  `dataset[k:]`: grain computes each element from its index (its shuffle and
  random maps are seeded per index), so element `k + i` of the slice's parent
  is the batch the interrupted run trained at position `k + i`. Every epoch
  of `fit` iterates the same dataset from index 0, so every epoch has the same
  order, resumed or not.
- An `IterDataset` is started from the state (`get_state()`) its iterator had
  when the checkpoint was written: right after the last trained batch, which
  is the state of the first batch not yet trained. The next epoch's fresh
  iterator gets it with `set_state()`.

With a `steps_per_epoch` smaller than one pass, Keras carries its iterator
over from one epoch to the next. For a `MapDataset`, `batches` gives the pass
length Keras leaves unknown, so a resume slices at `pass_offset + batch` (see
`resumable_scheduler.data`). For an `IterDataset`, the iterator's state
already holds its place in the pass; the checkpoint also records it at an
epoch end that the next epoch continues, and records `pass_offset` (the
batches of the pass earlier epochs consumed), which a resume gives back to
Keras's count of the pass (`EpochIterator._steps_seen`, which decides where
later epochs end).

The state saved in the checkpoint (`input["reader"]`) also records the batch
size and the number of batches (or of the source's elements), so a resumed
`fit` on a changed input is refused with both values named:

>>> import grain
>>> from resumable_scheduler.data import grain as positioner
>>> ds = grain.MapDataset.range(10).batch(2)
>>> positioner.check_state({"kind": "MapDataset", "batch_size": 2, "batches": 5}, 3)["batches"]
5
>>> positioner.check_state({"kind": "MapDataset", "batch_size": -1, "batches": 5}, 3)
Traceback (most recent call last):
...
ValueError: grain reader state in the checkpoint: field 'batch_size' must be a positive integer or null, got -1

`grain.DataLoader` inputs are not positioned (`matches` is False): their
interrupted epoch runs again from its first batch, with a warning.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

KINDS = ("MapDataset", "IterDataset")


def _grain() -> Any:
    try:
        import grain
    except ImportError:  # pragma: no cover - grain is an optional extra
        return None
    return grain


def matches(adapter: Any) -> bool:
    """True for Keras's grain adapter holding a `MapDataset` or an
    `IterDataset` (not a `grain.DataLoader`)."""
    if type(adapter).__name__ != "GrainDatasetAdapter":
        return False  # grain and keras.src untouched for other inputs
    grain = _grain()
    if grain is None:
        return False
    from resumable_scheduler._adapters import keras_grain as kg

    if not isinstance(adapter, kg.grain_adapter_class()):
        return False
    return isinstance(kg.dataset_of(adapter), (grain.MapDataset, grain.IterDataset))


def batches(adapter: Any) -> int | None:
    """Batches in one pass over the input: the length of a `MapDataset`
    (Keras leaves `num_batches` of grain inputs unknown), None for an
    `IterDataset`. With it, a `steps_per_epoch` smaller than one pass is
    tracked as for arrays (see `resumable_scheduler.data`): a resume slices
    the `MapDataset` at `pass_offset + batch`, where the iterator Keras
    carried over from earlier epochs stood."""
    from resumable_scheduler._adapters import keras_grain as kg

    grain = _grain()
    ds = kg.dataset_of(adapter)
    if grain is not None and isinstance(ds, grain.MapDataset):
        try:
            return int(len(ds))
        except Exception:  # noqa: BLE001 - an infinite/unknown length
            return None
    return None


def _jsonable(value: Any, where: str = "state") -> Any:
    """A grain iterator state as plain JSON values (grain states hold dicts,
    lists, strings and numbers, sometimes NumPy scalars)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _jsonable(item(), where)
    raise TypeError(
        f"grain iterator state {where} is a {type(value).__name__}, which a "
        "checkpoint cannot hold as JSON"
    )


def _source_len(dataset: Any) -> int | None:
    """Number of elements of the `MapDataset` an `IterDataset` is built on
    (its nearest `MapDataset` ancestor with a length), or None."""
    grain = _grain()
    todo, seen = [dataset], 0
    while todo and seen < 1000:
        ds = todo.pop(0)
        seen += 1
        if isinstance(ds, grain.MapDataset):
            try:
                return int(len(ds))
            except Exception:  # noqa: BLE001 - an infinite/unknown length
                return None
        todo.extend(getattr(ds, "parents", ()) or ())
    return None


def _pass_offset(adapter: Any, batch: int) -> int:
    """Batches of the running pass over an `IterDataset` that epochs before
    the running one consumed (0 without `steps_per_epoch`: every epoch is a
    fresh pass), given the checkpoint's `batch` in the running epoch (0 at
    its end: then the offset the next epoch starts at)."""
    from resumable_scheduler._adapters import keras_grain as kg
    from resumable_scheduler._adapters import keras_pydataset as kp

    it = kg.running_epoch_iterator(adapter)
    if it is None or not it.steps_per_epoch:
        return 0
    # Keras's count of the pass includes the running epoch's `batch` batches.
    return max(0, kp.pass_offset(it) - batch)


def capture(adapter: Any, batch: int) -> Any:
    """The JSON state that starts this input at batch `batch` again. At an
    epoch end (`batch=0`), None when the next epoch starts a fresh pass (a
    fresh epoch makes a fresh iterator), else the state it continues from
    (an `IterDataset` with a `steps_per_epoch` smaller than one pass)."""
    from resumable_scheduler._adapters import keras_grain as kg

    grain = _grain()
    ds = kg.dataset_of(adapter)
    offset = 0
    if not isinstance(ds, grain.MapDataset):
        offset = _pass_offset(adapter, batch)
    if batch == 0 and offset == 0:
        return None
    batch_size = adapter.batch_size
    out: dict[str, Any] = {"batch_size": None if batch_size is None else int(batch_size)}
    if isinstance(ds, grain.MapDataset):
        out.update(kind="MapDataset", batches=int(len(ds)))
        # Keras leaves the epoch length of grain inputs unknown; knowing it,
        # the callbacks checkpoint the end of an epoch as one.
        kg.set_epoch_length(adapter, len(ds))
        return out
    out.update(kind="IterDataset", source_len=_source_len(ds), state=None, pass_offset=offset)
    live = kg.running_data_iterator(adapter)
    if isinstance(live, grain.DatasetIterator):
        # Nothing between this iterator and the trained batch reads ahead
        # (Keras's look-ahead on accelerators wraps it in a generator), so
        # its state is that of batch `batch`, the first not yet trained (at
        # an epoch end: the next epoch's first).
        out["state"] = _jsonable(live.get_state())
    return out


def _check_int(state: dict[str, Any], field: str, allow_none: bool = True) -> None:
    v = state.get(field)
    if v is None and allow_none:
        return
    if type(v) is not int or v < (1 if field == "batch_size" else 0):
        kind = "a positive integer" if field == "batch_size" else "a non-negative integer"
        raise ValueError(
            f"grain reader state in the checkpoint: field {field!r} must be {kind}"
            f"{' or null' if allow_none else ''}, got {v!r}"
        )


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise ValueError(f"grain reader state in the checkpoint: field {where!r} is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"grain reader state in the checkpoint: field {where!r} has a non-string key")
            _check_json(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, str))
              or (isinstance(value, float) and math.isfinite(value))):
        raise ValueError(
            f"grain reader state in the checkpoint: field {where!r} holds a "
            f"{type(value).__name__}, not a JSON value"
        )


def check_state(state: Any, batch: int) -> dict[str, Any]:
    """Validates a reader state read from a checkpoint (see module doc);
    raises ValueError naming the bad field."""
    if not isinstance(state, dict):
        raise ValueError(
            f"grain reader state in the checkpoint: field 'reader' must be an object, got {type(state).__name__}"
        )
    if state.get("kind") not in KINDS:
        raise ValueError(
            f"grain reader state in the checkpoint: field 'kind' must be one of {list(KINDS)}, "
            f"got {state.get('kind')!r}"
        )
    _check_int(state, "batch_size")
    if state["kind"] == "MapDataset":
        _check_int(state, "batches", allow_none=False)
    else:
        _check_int(state, "source_len")
        _check_int(state, "pass_offset")
        st = state.get("state")
        if st is not None and not isinstance(st, dict):
            raise ValueError(
                "grain reader state in the checkpoint: field 'state' must be an object or null, "
                f"got {type(st).__name__}"
            )
        _check_json(st, "state")
    return state


def _refuse(batch: int, changes: list[str], wants: list[str]) -> None:
    raise ValueError(
        f"Cannot resume the grain input at batch {batch}: it is not the input the "
        f"checkpoint was written with: {'; '.join(changes)}. Its position counts "
        "batches of that input, so this fit would train the wrong samples. Rerun "
        f"with {', '.join(wants)} as when the checkpoint was written, or delete the "
        "checkpoint to start over."
    )


def start_at(adapter: Any, batch: int, state: Any) -> None:
    """Makes the next epoch's data iterator of `adapter` start at batch
    `batch` without reading the batches before it."""
    from resumable_scheduler._adapters import keras_grain as kg

    grain = _grain()
    ds = kg.dataset_of(adapter)
    kind = "MapDataset" if isinstance(ds, grain.MapDataset) else "IterDataset"
    if state is not None:
        state = check_state(state, batch)
        changes: list[str] = []
        wants: list[str] = []
        if state["kind"] != kind:
            changes.append(f"a grain.{state['kind']} then, a grain.{kind} now")
            wants.append(f"a grain.{state['kind']}")
        else:
            bs = adapter.batch_size
            if state["batch_size"] is not None and bs is not None and int(bs) != state["batch_size"]:
                changes.append(f"batch_size={state['batch_size']} then, {int(bs)} now")
                wants.append(f"batch_size={state['batch_size']}")
            # (A new batch size changes the number of batches too: named once.)
            if not changes and kind == "MapDataset" and int(len(ds)) != state["batches"]:
                changes.append(f"{state['batches']} batches per epoch then, {len(ds)} now")
                wants.append(f"a dataset of {state['batches']} batches")
            if kind == "IterDataset":
                old, new = state.get("source_len"), _source_len(ds)
                if old is not None and new is not None and old != new:
                    changes.append(f"{old} source elements then, {new} now")
                    wants.append(f"the same {old} source elements")
        if changes:
            _refuse(batch, changes, wants)
    if kind == "MapDataset":
        if batch > len(ds):
            _refuse(batch, [f"batch {batch} of an epoch of {len(ds)} batches"],
                    [f"the input of the interrupted run"])
        kg.next_epoch_uses(adapter, ds[batch:])
        kg.set_epoch_length(adapter, len(ds))
        return
    reader = state.get("state") if isinstance(state, dict) else None
    offset = (state.get("pass_offset") if isinstance(state, dict) else None) or 0
    if reader is None:
        skip = offset + batch
        warnings.warn(
            f"The checkpoint holds no grain iterator state for this IterDataset, so "
            f"the {skip} batches of its pass before the resumed one are read again "
            f"(not trained) to reach batch {batch} of the epoch. The resume is still "
            "exact.",
            UserWarning,
            stacklevel=2,
        )
        kg.next_epoch_uses(adapter, _Skipped(ds, skip))
    else:
        kg.next_epoch_uses(adapter, _Positioned(ds, reader))
    it = kg.running_epoch_iterator(adapter) if offset else None
    if it is not None and it.steps_per_epoch:
        from resumable_scheduler._adapters import keras_pydataset as kp

        # The epoch continues a pass that `offset` batches of earlier epochs
        # consumed: Keras counts them (`_steps_seen`) to know where the pass
        # ends, which decides where later epochs end.
        kp.carry(it, kp.new_data_iterator(it), offset)


def _iter_dataset_base() -> type:
    return _grain().IterDataset


class _Positioned:
    """An `IterDataset` whose iterator starts from a saved state."""

    def __new__(cls, parent: Any, state: dict[str, Any]) -> Any:
        return _positioned_class()(parent, state)


class _Skipped:
    """An `IterDataset` whose iterator starts after its first `n` elements
    (read and dropped)."""

    def __new__(cls, parent: Any, n: int) -> Any:
        return _skipped_class()(parent, n)


_CLASSES: dict[str, type] = {}


def _positioned_class() -> type:
    if "positioned" not in _CLASSES:
        base = _iter_dataset_base()

        class PositionedIterDataset(base):  # type: ignore[misc, valid-type]
            def __init__(self, parent: Any, state: dict[str, Any]) -> None:
                super().__init__(parent)
                self._rs_state = state

            def __iter__(self) -> Any:
                it = iter(self.parents[0])
                it.set_state(self._rs_state)
                return it

        _CLASSES["positioned"] = PositionedIterDataset
    return _CLASSES["positioned"]


def _skipped_class() -> type:
    if "skipped" not in _CLASSES:
        base = _iter_dataset_base()

        class SkippedIterDataset(base):  # type: ignore[misc, valid-type]
            def __init__(self, parent: Any, n: int) -> None:
                super().__init__(parent)
                self._rs_n = n

            def __iter__(self) -> Any:
                it = iter(self.parents[0])
                for _ in range(self._rs_n):
                    next(it)
                return it

        _CLASSES["skipped"] = SkippedIterDataset
    return _CLASSES["skipped"]
