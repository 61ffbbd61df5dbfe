"""Reading backup directories: stock Keras's `BackupAndRestore` layout.

Stock layout: `latest.weights.h5` (+ `.bkp`) and `training_metadata.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from resumable_scheduler.storage import h5

STOCK_WEIGHTS = "latest.weights.h5"
STOCK_METADATA = "training_metadata.json"


def is_backup_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, STOCK_WEIGHTS))


def read_envelope(path: str) -> tuple[dict[str, Any] | None, str]:
    weights = os.path.join(path, STOCK_WEIGHTS)
    doc = h5.read_envelope_h5(weights)
    meta = os.path.join(path, STOCK_METADATA)
    if doc is not None and os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            stock = json.load(f)
        if isinstance(stock, dict) and isinstance(stock.get("epoch"), int):
            doc.setdefault("stock_metadata", stock)
    return doc, weights
