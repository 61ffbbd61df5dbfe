"""Capturing and restoring every random-number state that decides training.

Host RNGs (NumPy's global generator, Python's `random`, and torch's global
generator when torch is loaded: its `RandomSampler` shuffles on the torch
backend) decide the batch order; Keras `SeedGenerator`s (dropout, noise layers, the global one) decide
the masks. Scalars go to JSON, arrays to an `.npz` (read with
`allow_pickle=False`).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np

from resumable_scheduler._adapters import keras as ki
from resumable_scheduler import snapshot
from resumable_scheduler.snapshot import short, short_name


def capture_host_rng(prefix: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns (JSON-safe scalars, arrays) for the host RNGs; array names
    start with `prefix`.

    >>> np.random.seed(1); meta, arrays = capture_host_rng()
    >>> a = np.random.rand(); restore_host_rng(meta, arrays); a == np.random.rand()
    True
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": {"name": str(name), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "gauss_next": gauss_next},
    }
    arrays = {
        f"{prefix}rng_numpy_keys": np.asarray(keys, dtype=np.uint32),
        f"{prefix}rng_python_internal": np.asarray(internal, dtype=np.uint64),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        arrays[f"{prefix}rng_torch"] = torch.get_rng_state().numpy().copy()
    return meta, arrays


def restore_host_rng(meta: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = "") -> None:
    """Inverse of `capture_host_rng`; raises ValueError on a malformed input."""
    try:
        n = meta["numpy"]
        np.random.set_state((n["name"], np.asarray(arrays[f"{prefix}rng_numpy_keys"], dtype=np.uint32),
                             int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
        p = meta["python"]
        internal = tuple(int(v) for v in arrays[f"{prefix}rng_python_internal"])
        gauss = p["gauss_next"]
        random.setstate((int(p["version"]), internal, None if gauss is None else float(gauss)))
        torch = sys.modules.get("torch")
        if torch is not None and f"{prefix}rng_torch" in arrays:
            torch.set_rng_state(torch.from_numpy(np.asarray(arrays[f"{prefix}rng_torch"], dtype=np.uint8).copy()))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"Invalid saved RNG state: {e!r}.") from None


_MT_WORDS = 624  # the state of a Mersenne Twister: 624 32-bit words, then a position


def _bad(field: str, where: str, received: str, expected: str) -> None:
    raise ValueError(
        f"Invalid value for field `{field}` in {where!r}. Received: {received}. Expected {expected}."
    )


def _check_words(field: str, arr: Any, where: str, length: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu" or arr.shape != (length,):
        _bad(field, where, f"an array of dtype {arr.dtype} and shape {short_name(arr.shape)}",
             f"shape ({length},) of integers")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 2**32):
        _bad(field, where, f"values from {int(arr.min())} to {int(arr.max())}", "32-bit words (0 to 2**32 - 1)")
    return arr


def check_host_rng(
    meta: Any, arrays: dict[str, np.ndarray], prefix: str = "", where: str = "", array_field: str = ""
) -> None:
    """Checks a saved host-RNG state (as `capture_host_rng` returns it)
    before anything is restored: `ValueError` naming `where` and the field
    otherwise. `array_field` is how the arrays are named in the file (such
    as `"training::"`)."""
    rng_field = snapshot.RNG_NOW if prefix else snapshot.RNG
    if not isinstance(meta, dict) or not isinstance(meta.get("numpy"), dict) or not isinstance(meta.get("python"), dict):
        _bad(rng_field, where, short(meta), 'a JSON object with "numpy" and "python" entries')
    n, p = meta["numpy"], meta["python"]
    if n.get("name") != "MT19937":
        _bad(f"{rng_field}.numpy.name", where, short(n.get("name")), "'MT19937'")
    for key, top in (("pos", _MT_WORDS), ("has_gauss", 1)):
        v = n.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            _bad(f"{rng_field}.numpy.{key}", where, short(v), f"an integer from 0 to {top}")
    for key, v, allow_none in (("numpy.cached_gaussian", n.get("cached_gaussian"), False),
                               ("python.gauss_next", p.get("gauss_next"), True)):
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(float(v)):
            _bad(f"{rng_field}.{key}", where, short(v), "a finite number" + (" or null" if allow_none else ""))
    if p.get("version") != random.getstate()[0] or isinstance(p.get("version"), bool):
        _bad(f"{rng_field}.python.version", where, short(p.get("version")), str(random.getstate()[0]))
    keys = f"{prefix}rng_numpy_keys"
    internal = f"{prefix}rng_python_internal"
    for name in (keys, internal):
        if name not in arrays:
            raise ValueError(f"Invalid checkpoint {where!r}: the array `{array_field}{name}` is missing.")
    _check_words(f"{array_field}{keys}", arrays[keys], where, _MT_WORDS)
    words = _check_words(f"{array_field}{internal}", arrays[internal], where, _MT_WORDS + 1)
    if not 0 <= int(words[-1]) <= _MT_WORDS:
        _bad(f"{array_field}{internal}", where, f"position {int(words[-1])}", f"a last entry from 0 to {_MT_WORDS}")
    torch_name = f"{prefix}rng_torch"
    if torch_name in arrays:
        arr = np.asarray(arrays[torch_name])
        if arr.dtype != np.uint8 or arr.ndim != 1:
            _bad(f"{array_field}{torch_name}", where, f"dtype {arr.dtype}, shape {short_name(arr.shape)}",
                 "a 1-d uint8 array")


def check_seed_generator_arrays(arrays: dict[str, np.ndarray], where: str = "", array_field: str = "") -> None:
    """Checks saved `SeedGenerator` states: each a (2,) array of integers."""
    for name, arr in arrays.items():
        if name.startswith("seed_generator_"):
            arr = np.asarray(arr)
            if arr.dtype.kind not in "iu" or arr.shape != (2,):
                _bad(f"{array_field}{name}", where, f"dtype {arr.dtype}, shape {short_name(arr.shape)}",
                     "shape (2,) of integers (a Keras SeedGenerator state)")


def capture_seed_generators(model: Any) -> dict[str, np.ndarray]:
    """The state of every Keras SeedGenerator of the model, plus the global one."""
    out: dict[str, np.ndarray] = {}
    for i, sg in enumerate(ki.seed_generators(model)):
        out[f"seed_generator_{i}"] = np.asarray(sg.state.numpy())
    g = ki.global_seed_generator()
    if g is not None:
        out["seed_generator_global"] = np.asarray(g.state.numpy())
    return out


def restore_seed_generators(model: Any, arrays: dict[str, np.ndarray]) -> None:
    for i, sg in enumerate(ki.seed_generators(model)):
        key = f"seed_generator_{i}"
        if key in arrays:
            sg.state.assign(np.asarray(arrays[key], dtype=sg.state.dtype))
    g = ki.global_seed_generator()
    if g is not None and "seed_generator_global" in arrays:
        g.state.assign(np.asarray(arrays["seed_generator_global"], dtype=g.state.dtype))
