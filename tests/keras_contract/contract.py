"""Running Keras's own callback tests (from the installed wheel) against our
classes, in a child pytest with `swap_plugin`, and reading the results.

Used by `test_keras_contract.py`; nothing here runs at import.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PLUGIN = "tests.keras_contract.swap_plugin"
CHILD_INI = HERE / "child.ini"

#: Keras test file -> the swapped classes its tests must construct.
FILES = {
    "learning_rate_scheduler_test.py": ("LearningRateScheduler",),
    "backup_and_restore_test.py": ("BackupAndRestore",),
    "reduce_lr_on_plateau_test.py": ("ReduceLROnPlateau",),
    "early_stopping_test.py": ("EarlyStopping",),
    "orbax_checkpoint_test.py": ("OrbaxCheckpoint",),
    "model_checkpoint_test.py": (),  # ours ride along in its fits instead
}
RIDE_FILE = "model_checkpoint_test.py"
RIDE_ALONG = ("LearningRateScheduler", "EarlyStopping")
PROPERTY = "rs_counts"

#: The one documented difference: `rs.BackupAndRestore` resumes at the first
#: batch not yet trained (15 batches in all), stock Keras re-runs the
#: interrupted epoch from its start (17). Checked by
#: `test_keras_contract.py::test_best_case_step_ours`.
EXPECTED_DIFFERENCE = {
    ("backup_and_restore_test.py", "test_best_case_step"): "15 != 17",
}


#: A `keras/src/callbacks` directory to take the test files from, for a Keras
#: whose wheel ships none (3.14 and 3.15.0 do not; 3.15.1 does). The
#: declared-floor run sets it to the newest Keras's (see test_keras_floor.py).
TESTS_DIR_ENV = "RS_KERAS_TESTS_DIR"


def installed_callbacks_dir() -> Path:
    """The installed wheel's `keras/src/callbacks`."""
    import keras

    return Path(keras.__file__).resolve().parent / "src" / "callbacks"


def callbacks_dir() -> Path:
    """Where the Keras test files are read from: the installed wheel, unless
    `RS_KERAS_TESTS_DIR` names another Keras's."""
    override = os.environ.get(TESTS_DIR_ENV)
    return Path(override).resolve() if override else installed_callbacks_dir()


@dataclasses.dataclass
class Case:
    file: str
    name: str  # the unittest method name, as the JUnit XML reports it
    outcome: str  # passed, failed, error, skipped
    message: str
    counts: dict | None


def test_ids(directory: Path | None = None) -> list[tuple[str, str]]:
    """(file, `Class::method`) of every `test_*` method in the files, read
    statically (cheap: no Keras import, no child process). A parametrized
    method (absl `parameterized`) stands for all its generated cases."""
    directory = directory or callbacks_dir()
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        import keras

        raise RuntimeError(
            f"No Keras callback tests {missing} in {directory} (Keras {keras.__version__}: "
            "only some wheels ship them, 3.15.1 does). Set "
            f"{TESTS_DIR_ENV} to the keras/src/callbacks directory of a Keras that does."
        )
    ids = []
    for name in FILES:
        tree = ast.parse((directory / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                for f in node.body:
                    if isinstance(f, ast.FunctionDef) and f.name.startswith("test"):
                        ids.append((name, f"{node.name}::{f.name}"))
    return ids


def run_child(files: list[str], xml_path: Path, env_extra: dict | None = None,
              select: list[str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the Keras test `files` once in a child pytest with the swap plugin."""
    directory = callbacks_dir()
    if directory != installed_callbacks_dir():
        # Another Keras's test files: run copies of them as plain modules, so
        # that `keras` stays the one installed here (never in the repository).
        copies = xml_path.parent / "keras_tests"
        copies.mkdir(exist_ok=True)
        for name in FILES:
            (copies / name).write_bytes((directory / name).read_bytes())
        directory = copies
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(env_extra or {})
    targets = [str(directory / f) for f in files] if not select else [f"{directory / s}" for s in select]
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", PLUGIN, "-p", "no:cacheprovider",
        "-c", str(CHILD_INI), "--rootdir", str(directory), "--confcutdir", str(directory),
        f"--junitxml={xml_path}", "-o", "junit_family=xunit1", *targets,
    ]
    return subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)


def read_xml(xml_path: Path) -> list[Case]:
    cases = []
    for tc in ET.parse(xml_path).getroot().iter("testcase"):
        file = Path(tc.get("file") or "").name or _file_of(tc.get("classname", ""))
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or "") + "\n" + (el.text or "")
                break
        counts = None
        props = tc.find("properties")
        if props is not None:
            for p in props.iter("property"):
                if p.get("name") == PROPERTY:
                    counts = json.loads(p.get("value"))
        cases.append(Case(file, tc.get("name"), outcome, message.strip(), counts))
    return cases


def _file_of(classname: str) -> str:
    # classname is "keras.src.callbacks.x_test.Class" or "x_test.Class".
    parts = classname.split(".")
    return f"{parts[-2]}.py" if len(parts) >= 2 else ""


def cases_of(cases: list[Case], file: str, method: str, methods: list[str]) -> list[Case]:
    """The XML cases generated by `method` of `file`: its own name, or its
    name with a parametrization suffix; each case goes to the longest
    method name that prefixes it."""
    own = []
    for c in cases:
        if c.file != file:
            continue
        owners = [m for m in methods if c.name == m or c.name.startswith(m)]
        if owners and max(owners, key=len) == method:
            own.append(c)
    return own


def swap_problems(case: Case) -> list[str]:
    """Why this case did not provably test our classes ([] if it did)."""
    if case.counts is None:
        return [f"{case.name}: no `{PROPERTY}` record: the swap plugin did not run"]
    problems = []
    if case.counts.get("stock"):
        problems.append(f"{case.name}: constructed stock Keras callbacks {case.counts['stock']}")
    ours = case.counts.get("ours", {})
    if case.outcome == "skipped":
        return problems
    for name in FILES.get(case.file, ()):
        if not ours.get(name):
            problems.append(f"{case.name}: constructed no rs.{name} (counts {case.counts})")
    if case.file == RIDE_FILE:
        fits = case.counts.get("fits", {})
        if fits.get("without"):
            problems.append(f"{case.name}: {fits['without']} fit(s) ran without our ride-along callbacks")
        n = fits.get("with_ride_along", 0)
        if not n:
            problems.append(f"{case.name}: no fit ran with our ride-along callbacks")
        for name in RIDE_ALONG:
            if ours.get(name, 0) != n:
                problems.append(f"{case.name}: {ours.get(name, 0)} rs.{name} for {n} fits")
    return problems
