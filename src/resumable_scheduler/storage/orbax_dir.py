"""Reading Orbax checkpoint directories (filled in by the Orbax issue)."""

from __future__ import annotations

import os
from typing import Any


def is_orbax_dir(path: str) -> bool:
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name)) for name in os.listdir(path))


def read_envelope(path: str, step: int | None = None) -> tuple[dict[str, Any] | None, str]:
    raise ValueError(f"Reading Orbax directories is not supported yet: path={path!r}.")
