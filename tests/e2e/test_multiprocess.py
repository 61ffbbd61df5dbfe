"""Two JAX processes training together with rs.OrbaxCheckpoint: SIGKILLed and
restarted, or SIGTERMed, they end exactly where an uninterrupted run ends.

Quick mode (default, CI): one random double SIGKILL and one SIGTERM.
RS_FULL=1: four SIGKILLs at random batches, and SIGTERM to each process.
Set RS_MP_SEED to replay a run (the seed is printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import resumable_scheduler as rs

pytestmark = pytest.mark.slow

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "multiprocess_child.py")
FULL = os.environ.get("RS_FULL") == "1"
SEED = int(os.environ.get("RS_MP_SEED", random.randrange(1 << 30)))
# 16 samples, 8 per process, 2 per process per batch: 4 batches an epoch, 60 in all.
COMMON = ["--processes", "2", "--samples", "16", "--batch-size", "2", "--epochs", "15"]
BATCHES = 60
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(directory, out, *extra, logs=None):
    """Starts both processes of one run; returns them (stdout piped)."""
    port = free_port()
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = []
    for i in range(2):
        err = open(os.path.join(logs, f"stderr-{i}-{port}.log"), "w") if logs else subprocess.DEVNULL  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, CHILD, os.fspath(directory), os.fspath(out), *COMMON,
             "--process-id", str(i), "--port", str(port), *extra],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        ))
    return procs


def finish(procs, timeout=TIMEOUT):
    """Waits for both; returns (exit codes, stdout lines of each)."""
    outs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out.splitlines())
    return [p.returncode for p in procs], outs


def read_until(proc, line_wanted, timeout=TIMEOUT):
    """Reads proc's stdout until `line_wanted`; returns the lines read."""
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line.strip())
        if line.strip() == line_wanted:
            return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never printed {line_wanted!r}; last lines: {seen[-5:]}")


def result(out):
    res = []
    for i in range(2):
        with open(os.path.join(out, f"result-{i}.json")) as f:
            r = json.load(f)
        with np.load(os.path.join(out, f"weights-{i}.npz"), allow_pickle=False) as z:
            r["weights"] = [z[f"arr_{k}"] for k in range(len(z.files))]
        res.append(r)
    return res


def assert_same(got, ref):
    for g, r in zip(got, ref):
        assert g["lr"] == r["lr"]
        assert g["iterations"] == r["iterations"] == BATCHES
        assert len(g["weights"]) == len(r["weights"])
        for a, b in zip(g["weights"], r["weights"]):
            assert np.isfinite(a).all()
            assert np.array_equal(a, b)


def batch_line(n):
    return f"batch {n // 4} {n % 4}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp_ref")
    codes, _ = finish(launch(base / "unused", base / "out", "--no-ckpt"))
    assert codes == [0, 0]
    ref = result(base / "out")
    assert ref[0]["lr"] == pytest.approx(0.01 * np.exp(-0.5), rel=1e-6)
    return ref


def test_both_processes_sigkilled_at_random_batches_resume_exactly(tmp_path, reference):
    rng = random.Random(SEED)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    kills = 4 if FULL else 1
    for k in range(kills):
        procs = launch(ckpt, out, "--save-freq", "3", logs=tmp_path)
        read_until(procs[0], "start")
        # Kill after a random number of batches of this run (4 kills x <= 12
        # batches never reach the end of the 60).
        for _ in range(rng.randint(1, 12)):
            assert procs[0].stdout.readline().startswith("batch"), f"seed {SEED}, kill {k}"
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
            assert p.returncode == -signal.SIGKILL, f"seed {SEED}, kill {k}"
    procs = launch(ckpt, out, "--save-freq", "3", logs=tmp_path)
    codes, outs = finish(procs)
    assert codes == [0, 0], f"seed {SEED}"
    assert outs[0] == outs[1] or outs[0][-1] == outs[1][-1] == "done"
    assert_same(result(out), reference)


@pytest.mark.parametrize("target", [0, 1] if FULL else [1])
def test_sigterm_to_one_process_saves_one_agreed_step_and_stops_both(tmp_path, reference, target):
    rng = random.Random(SEED + target)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    procs = launch(ckpt, out, "--save-freq", "epoch", "--sleep", "0.05", logs=tmp_path)
    at = rng.randrange(5, BATCHES - 10)
    read_until(procs[0], batch_line(at))
    sent = time.monotonic()
    procs[target].send_signal(signal.SIGTERM)
    codes, outs = finish(procs, timeout=60)
    assert time.monotonic() - sent < 20
    assert codes == [rs.PREEMPTED_EXIT_CODE] * 2, f"seed {SEED}"
    # Both stopped after the same batch, and that is the saved step.
    last = [[line for line in o if line.startswith("batch")][-1] for o in outs]
    assert last[0] == last[1]
    state = rs.read_state(os.fspath(ckpt))
    e, b = map(int, last[0].split()[1:])
    assert (state["epoch"], state["batch"]) == ((e, b + 1) if b < 3 else (e + 1, 0))
    assert state["step"] == 4 * e + b + 1

    codes, _ = finish(launch(ckpt, out, "--save-freq", "epoch", logs=tmp_path))
    assert codes == [0, 0]
    assert_same(result(out), reference)
