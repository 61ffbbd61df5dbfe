"""Several JAX processes training together: who they are, and how they
exchange a few bytes at a save point.

`rs.BackupAndRestore` in a multi-process run (`keras.distribution`
initialized, `jax.process_count() > 1`) has process 0 write every
checkpoint on behalf of all: each process's own part (its host RNGs, its
input record) is gathered to it with `allgather_bytes`, and the name of the
checkpoint to restore is handed from it to all with `broadcast_text`. Every
function here is a collective when several processes run (every process
must call it, in the same order: they do, at the same save points of the
same `fit`) and a plain local call in a single process, on any backend.

>>> count(), index()
(1, 0)
>>> allgather_bytes(b"mine")
[b'mine']
>>> broadcast_text("ckpt-00000001")
'ckpt-00000001'
>>> agree(None) is None
True
"""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np

from resumable_scheduler import rng, snapshot
from resumable_scheduler.snapshot import short_name


def count() -> int:
    """How many JAX processes train together (1 outside JAX)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def index() -> int:
    """This process's index, 0 to `count() - 1` (0 outside JAX)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def _allgather(x: np.ndarray) -> np.ndarray:
    """`x` (same shape on every process) from every process, stacked."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's `data` (any length), in process order; every process
    gets the whole list. Two collectives: the lengths, then the bytes padded
    to the longest."""
    if count() == 1:
        return [bytes(data)]
    sizes = _allgather(np.array([len(data)], np.int64)).reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    rows = _allgather(padded)
    return [bytes(rows[i, : int(sizes[i])]) for i in range(len(sizes))]


def broadcast_text(text: str) -> str:
    """Process 0's `text`, on every process (what the others pass is ignored)."""
    if count() == 1:
        return text
    mine = text.encode("utf-8") if index() == 0 else b""
    return allgather_bytes(mine)[0].decode("utf-8")


def agree(error: BaseException | None, what: str = "") -> BaseException | None:
    """Makes every process fail together: returns this process's `error`,
    else, if another process had one, a `RuntimeError` naming it and what
    failed there; None when all succeeded. One collective."""
    if count() == 1:
        return error
    text = "" if error is None else f"{type(error).__name__}: {str(error)[:500]}"
    texts = allgather_bytes(text.encode("utf-8", "replace"))
    if error is not None:
        return error
    for i, t in enumerate(texts):
        if t:
            return RuntimeError(
                f"Process {i} of {len(texts)} failed{' ' + what if what else ''}: "
                f"{t.decode('utf-8', 'replace')}. Every process stops with it."
            )
    return None


def agreed_max(value: int) -> int:
    """The largest of every process's `value` (a signal number, say). One
    collective when several processes run."""
    if count() == 1:
        return int(value)
    return int(np.max(_allgather(np.array([int(value)], np.int64))))


# -- each process's own part of a checkpoint ----------------------------------

#: The host-RNG arrays of `training_state.capture` (`rng_*`, and `now_rng_*`
#: mid-epoch): they differ from process to process.
HOST_RNG_PREFIXES = ("rng_", "now_rng_")
#: Envelope keys: how many processes wrote a checkpoint, and each one's part.
COUNT_KEY = snapshot.PROCESSES
PARTS_KEY = snapshot.PER_PROCESS
#: The envelope items each process has its own of.
OWN_ITEMS = (snapshot.RNG_NOW, snapshot.INPUT)


def encode_part(doc: dict[str, Any], arrays: dict[str, np.ndarray], error: str = "") -> bytes:
    """This process's own part of a checkpoint captured by
    `training_state.capture` (its host RNGs at the epoch's start and now,
    and the input record its position counts), as JSON bytes; `error` tells
    the others that this process cannot go on (a failed write)."""
    part: dict[str, Any] = {
        snapshot.RNG: doc[snapshot.RNG],
        "arrays": {
            k: {"dtype": str(np.asarray(v).dtype), "data": np.asarray(v).tolist()}
            for k, v in sorted(arrays.items())
            if k.startswith(HOST_RNG_PREFIXES)
        },
    }
    for key in OWN_ITEMS:
        if key in doc:
            part[key] = doc[key]
    if error:
        part["error"] = error
    return json.dumps(part, allow_nan=False, sort_keys=True).encode("utf-8")


def decode_parts(raw: list[bytes]) -> list[dict[str, Any]]:
    """`encode_part`'s output of every process, parsed."""
    return [json.loads(r.decode("utf-8")) for r in raw]


def part_for(
    doc: dict[str, Any], arrays: dict[str, np.ndarray], where: str, processes: int, process: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checkpoint `doc`/`arrays` read at `where`, as process `process`
    of a run of `processes` restores it: with its own host RNGs and input
    record. Raises `ValueError` naming `where` when the checkpoint was
    written by another number of processes, or its part is malformed."""
    saved = doc.get(COUNT_KEY, 1)
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(
            f"Invalid value for field `{COUNT_KEY}` in {where!r}. Received: {saved!r:.100}. "
            "Expected a number of processes >= 1."
        )
    if saved != processes:
        raise ValueError(
            f"Cannot resume from {where!r}: it was written by a run of {saved} process"
            f"{'es' if saved != 1 else ''} and this run has {processes}. Each process's "
            "position and host RNGs are saved per process, so a run resumes only with the "
            "same number of processes. Rerun with "
            f"{saved} process{'es' if saved != 1 else ''}, or delete the checkpoint to start over."
        )
    if processes == 1:
        return doc, arrays
    parts = doc.get(PARTS_KEY)
    if not isinstance(parts, list) or len(parts) != processes:
        raise ValueError(
            f"Invalid value for field `{PARTS_KEY}` in {where!r}: expected a list of "
            f"{processes} per-process parts."
        )
    part = parts[process]
    field = f"{PARTS_KEY}[{process}]"
    try:
        if not isinstance(part, dict) or not isinstance(part.get("arrays"), dict):
            raise TypeError("not a JSON object with `arrays`")
        own = {
            str(k): np.asarray(a["data"], dtype=np.dtype(str(a["dtype"])))
            for k, a in part["arrays"].items()
            if str(k).startswith(HOST_RNG_PREFIXES)
        }
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"Invalid value for field `{field}` in {where!r}: {short_name(e, 300)}.") from None
    rng.check_host_rng(part.get(snapshot.RNG), own, where=where, array_field=f"{field}.arrays.")
    if doc[snapshot.POSITION]["batch"] or snapshot.RNG_NOW in part:
        rng.check_host_rng(
            part.get(snapshot.RNG_NOW), own, prefix=snapshot.NOW_PREFIX, where=where, array_field=f"{field}.arrays."
        )
    out_doc = {k: v for k, v in doc.items() if k not in OWN_ITEMS}
    out_doc[snapshot.RNG] = part[snapshot.RNG]
    for key in OWN_ITEMS:
        if key in part:
            out_doc[key] = part[key]
    out_arrays = {k: v for k, v in arrays.items() if not k.startswith(HOST_RNG_PREFIXES)}
    out_arrays.update(own)
    return out_doc, out_arrays
