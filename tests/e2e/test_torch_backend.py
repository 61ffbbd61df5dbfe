"""The suite's backend-independent tests, run again on the torch backend.

Keras fixes its backend once per process, so this test runs pytest in a
child process with KERAS_BACKEND=torch over the files that make sense on
both backends: the documented example, exact resume (with torch's RNG and
sampler), preemption, the kill soak, the resumable callbacks and per-step
schedules. JAX-only files (Orbax, multi-process JAX, the JAX demo/CLI, the
JAX-written fixtures' reference runs) are not repeated. Skipped where torch
is not installed; `.ci/run` installs it, so CI always runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
FILES = [
    "integration/test_scheduler.py",
    "integration/test_checkpoints.py",
    "integration/test_fixtures.py",
    "integration/test_backup_exact.py",
    "integration/test_backup_conditions.py",
    "e2e/test_preemption.py",
    "e2e/test_soak.py",
    "integration/test_plateau.py",
    "integration/test_early_stopping.py",
    "integration/test_step_schedule.py",
    "integration/test_fit_lifecycle.py",
    "integration/test_changed_inputs.py",
    "integration/test_fit_lifecycle_data.py",
    "integration/test_background_save.py",
    "integration/test_torch_loader.py",
    "integration/test_timeline.py",
]


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() == "torch", reason="this process is the torch run")
def test_backend_independent_tests_pass_on_torch():
    pytest.importorskip("torch", reason="install torch==2.13.0 to run the torch pass")
    env = {**os.environ, "KERAS_BACKEND": "torch"}

    def run(*targets):
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *targets],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
        )

    proc = run(*[os.path.join("tests", f) for f in FILES])
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    if proc.returncode != 0 and failed:
        # A failure that does not repeat (timing on a loaded 2-core machine)
        # is reported as a warning naming it; one that repeats fails here.
        again = run(*failed)
        assert again.returncode == 0, proc.stdout[-4000:] + again.stdout[-4000:] + again.stderr[-2000:]
        import warnings

        warnings.warn(f"torch pass: failed once, passed when rerun: {failed}", UserWarning)
        return
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"\b\d+ failed\b", summary), summary
