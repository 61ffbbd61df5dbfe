"""Positioner for grain inputs (issue 10; not built yet: matches nothing)."""

from __future__ import annotations

from typing import Any


def matches(adapter: Any) -> bool:
    """True for the Keras data adapters this module positions."""
    return False


def start_at(adapter: Any, batch: int, state: Any) -> None:  # pragma: no cover - not built yet
    raise NotImplementedError


def capture(adapter: Any, batch: int) -> Any:  # pragma: no cover - not built yet
    return None
