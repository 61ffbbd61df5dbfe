"""Doctest set-up for the modules under src/: backend first, then the names
the examples use (`keras`, `np`, `ops`, `rs`)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import keras
    import numpy as np
    from keras import ops

    import resumable_scheduler as rs

    doctest_namespace.update(keras=keras, np=np, ops=ops, rs=rs)
