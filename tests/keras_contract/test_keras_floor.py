"""The Keras-contract suite on the declared Keras floor (`keras>=X` in
pyproject.toml), in the second environment `.ci/run` builds: `.venv-floor`,
the same project install with `keras==X`.

The newest Keras runs the suite in the normal environment
(test_keras_contract.py). Keras wheels before 3.15.1 ship no callback tests,
so the floor runs the newest Keras's test files (`RS_KERAS_TESTS_DIR`) against
the floor's Keras: our classes on the oldest Keras we claim, held to the
newest Keras's contract.

Without `.venv-floor` this test skips, except on CI (`CI=true`), where a
missing floor environment is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.keras_contract import contract

FLOOR_PYTHON = contract.ROOT / ".venv-floor" / "bin" / "python"


def declared_floor() -> str:
    text = (contract.ROOT / "pyproject.toml").read_text()
    found = re.findall(r'"keras>=([0-9][0-9.]*)"', text)
    assert len(found) == 1, f"pyproject.toml must declare one `keras>=X` dependency, found {found}"
    return found[0]


def test_the_declared_floor_has_what_we_need():
    """`rs.OrbaxCheckpoint` subclasses `keras.callbacks.OrbaxCheckpoint`,
    which Keras 3.13 lacks; the multi-optimizer support and our tests use
    `keras.optimizers.OptimizerMap`, which 3.14 lacks. Both are in 3.15.0."""
    major, minor, *_ = (int(p) for p in declared_floor().split("."))
    assert (major, minor) >= (3, 15)


def test_contract_suite_on_the_declared_keras_floor(tmp_path):
    floor = declared_floor()
    if not FLOOR_PYTHON.exists():
        message = (
            f"No {FLOOR_PYTHON.relative_to(contract.ROOT)}: the Keras-contract suite did not "
            f"run on the declared floor keras=={floor}. .ci/run builds it."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    version = subprocess.run(
        [str(FLOOR_PYTHON), "-c", "import keras; print(keras.__version__)"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert version.stdout.strip() == floor, (
        f".venv-floor has keras {version.stdout.strip() or version.stderr[-500:]}, "
        f"but pyproject.toml declares keras>={floor}: rebuild it (.ci/run)."
    )
    env[contract.TESTS_DIR_ENV] = str(contract.installed_callbacks_dir())
    proc = subprocess.run(
        [
            str(FLOOR_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            f"--basetemp={tmp_path / 'floor'}",
            str(contract.HERE / "test_keras_contract.py"),
            # The harness's own checks need no second run.
            "-k", "not stock_keras_is_caught and not without_the_plugin",
        ],
        cwd=str(contract.ROOT), capture_output=True, text=True, env=env, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"The Keras-contract suite fails on keras=={floor}:\n{out[-8000:]}"
    assert re.search(r"\d+ passed", out), out[-2000:]
    print(f"keras=={floor}: {out.strip().splitlines()[-1]}", file=sys.stderr)
