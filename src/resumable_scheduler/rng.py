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

from resumable_scheduler import _keras_internals as ki


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
