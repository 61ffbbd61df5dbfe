"""Two JAX processes training together with rs.BackupAndRestore (issue 9,
section 4): `backup_dir` on a local directory and on the S3 test server,
both processes SIGKILLed at a random batch and restarted, end bitwise equal
to a run never killed, in both processes. Process 0 alone writes: it holds
the lock (the lease), and a process other than 0 never writes anything.

Each process seeds its host RNGs differently (`--seed-per-process`), so each
shuffles its half of the data in its own order: a resume that handed a
process another process's host RNG state would train other batches.

Quick mode (default, CI): two kills per back end. RS_FULL=1: five.
Set RS_MP_SEED to replay a run (the seed is printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import harness, processes
from tests.support.multiprocess import (
    BATCHES, FULL, PER_EPOCH, SEED, TIMEOUT, assert_same, batch_index, kill_and_finish, launch, result, run_to_end,
    saved_position,
)

pytestmark = pytest.mark.slow

ARGS = ("--backup", "--save-freq", "1", "--seed-per-process")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Both processes' result of a two-process run never killed."""
    base = tmp_path_factory.mktemp("mp_backup_ref")
    run_to_end(base / "unused", base / "out", "--no-ckpt", "--seed-per-process")
    ref = result(base / "out")
    assert ref[0]["lr"] == pytest.approx(0.01 * np.exp(-0.5), rel=1e-6)
    # The two processes shuffled differently and still hold one model.
    assert all(np.array_equal(a, b) for a, b in zip(ref[0]["weights"], ref[1]["weights"]))
    return ref


@pytest.fixture
def s3_url(object_servers, monkeypatch):
    """A fresh bucket prefix on the S3 test server; the children inherit the
    client variables through `os.environ`."""
    server = object_servers["s3"]
    if server.missing:
        if os.environ.get("CI"):
            pytest.fail(server.missing)
        pytest.skip(server.missing)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{server.make_bucket()}/run"


@pytest.fixture(params=["local", "s3"])
def backup_dir(request, tmp_path):
    if request.param == "local":
        return os.fspath(tmp_path / "backup")
    return request.getfixturevalue("s3_url")


def lock_holders(directory: str) -> set[int]:
    """The pids holding a `flock` on `directory/.lock` (from /proc/locks)."""
    ino = os.stat(os.path.join(directory, ".lock")).st_ino
    holders = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:123456 0 EOF" (blocked
            # waiters are listed with "->" and are not holders).
            if "->" in fields or len(fields) < 6:
                continue
            if fields[5].rsplit(":", 1)[-1] == str(ino):
                holders.add(int(fields[4]))
    return holders


def lease_holder(url: str) -> dict:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{path.rstrip('/')}/.lease"))


def bucket_names(url: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def assert_one_writer(backup_dir: str, pids: list[int]) -> None:
    """Process 0 holds the run's lock (lease); process 1 holds none, and
    the location holds only committed checkpoints and that lock."""
    if backup_dir.startswith("s3://"):
        assert lease_holder(backup_dir)["pid"] == pids[0]
        names = bucket_names(backup_dir)
        assert ".lease" in names
    else:
        assert lock_holders(backup_dir) == {pids[0]}
        names = sorted(os.listdir(backup_dir))
        assert ".lock" in names
    ckpts = [n for n in names if not n.startswith(".")]
    assert ckpts and all(n.startswith("ckpt-") and n.endswith(".weights.h5") for n in ckpts), names


def test_both_processes_sigkilled_resume_exactly(tmp_path, backup_dir, reference):
    # Kill after a random number of batches of each life (5 lives x at most
    # 10 batches never reach the end of the 60).
    plan = harness.random_kills(5 if FULL else 2, random.Random(SEED), after_lines=(2, 10))
    kill_and_finish(backup_dir, tmp_path / "out", ARGS, plan, reference, tmp_path,
                    first_life=lambda group: assert_one_writer(backup_dir, group.pids))


def test_sigterm_to_one_process_saves_one_checkpoint_and_stops_both(tmp_path, reference):
    rng = random.Random(SEED + 1)
    backup_dir, out = os.fspath(tmp_path / "backup"), tmp_path / "out"
    args = ("--backup", "--save-freq", "epoch", "--seed-per-process")
    at = rng.randrange(5, BATCHES - 10)
    # SIGTERM to process 1 once process 0 reports batch `at`.
    sigterm = harness.Kill(at_batch=at + 1, signal=signal.SIGTERM, grace=60)
    with launch(backup_dir, out, *args, "--sleep", "0.05", logs=tmp_path) as group:
        assert group.watch(sigterm, batches_per_epoch=PER_EPOCH, timeout=TIMEOUT), f"seed {SEED}"
        codes = group.stop(sigterm.signal, sigterm.grace, only=1)
        assert codes == [rs.PREEMPTED_EXIT_CODE] * 2, f"seed {SEED}: {codes}\n{group.stderr_tails()}"
        # Both stopped after the same batch, and that is the saved position.
        last = [c.progress for c in group]
    assert last[0] == last[1]
    state = rs.read_state(backup_dir)
    assert (state["epoch"], state["batch"]) == saved_position(last[0])
    assert state["step"] == batch_index(last[0]) + 1
    run_to_end(backup_dir, out, *args, logs=tmp_path, run=2)
    assert_same(result(out), reference)


# -- in one process, standing in for one of two (no collectives needed) --------


class _FakeProcesses:
    """`resumable_scheduler.processes` as seen by process `index` of 2, the other
    process's contributions being copies of this one's."""

    def __init__(self, monkeypatch, index: int, decision: str = "fresh") -> None:
        self.gathered: list[list[bytes]] = []
        monkeypatch.setattr(processes, "count", lambda: 2)
        monkeypatch.setattr(processes, "index", lambda: index)
        monkeypatch.setattr(processes, "broadcast_text", lambda text: text if index == 0 else decision)
        monkeypatch.setattr(processes, "agree", lambda error, what="": error)
        monkeypatch.setattr(processes, "agreed_max", lambda value: int(value))

        def allgather(data: bytes) -> list[bytes]:
            rows = [data, data]
            self.gathered.append(rows)
            return rows

        monkeypatch.setattr(processes, "allgather_bytes", allgather)


def _fit(backup_dir, epochs=2, **kw):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    cbs = [rs.BackupAndRestore(backup_dir, save_freq=1, **kw),
           rs.LearningRateScheduler(lambda epoch, lr: lr)]
    model.fit(np.arange(100, dtype="float32").reshape(5, 20) / 100, np.zeros((5, 10)), epochs=epochs,
              batch_size=1, callbacks=cbs, verbose=0)
    return model


@pytest.mark.parametrize("background", [True, False])
def test_a_process_other_than_0_never_writes(tmp_path, monkeypatch, background):
    fake = _FakeProcesses(monkeypatch, index=1)
    backup_dir = tmp_path / "backup"
    model = _fit(backup_dir, save_on_background=background)
    assert int(model.optimizer.iterations) == 10
    assert len(fake.gathered) == 10  # it took part in every save point
    assert not backup_dir.exists()  # and never wrote, nor even took the lock


def test_process_0_writes_every_part_and_another_count_is_refused(tmp_path, monkeypatch):
    _FakeProcesses(monkeypatch, index=0)
    backup_dir = tmp_path / "backup"
    _fit(backup_dir, epochs=2, delete_checkpoint=False)
    state = rs.read_state(os.fspath(backup_dir))
    assert (state["epoch"], state["batch"]) == (2, 0)
    names = sorted(os.listdir(backup_dir))
    ckpt = [n for n in names if n.startswith("ckpt-")]
    assert len(ckpt) == 1
    monkeypatch.undo()
    # Process 1 resumes the checkpoint process 0 names, with its own part,
    # and leaves the directory as it was.
    _FakeProcesses(monkeypatch, index=1, decision=f"ckpt {ckpt[0]}")
    model = _fit(backup_dir, epochs=3)
    assert int(model.optimizer.iterations) == 15
    assert sorted(os.listdir(backup_dir)) == names
    monkeypatch.undo()
    # The checkpoint says two processes wrote it: one process cannot resume it.
    with pytest.raises(ValueError, match=r"written by a run of 2 processes and this run has 1"):
        _fit(backup_dir, epochs=3)


def test_process_0_failing_to_start_fails_the_others(tmp_path, monkeypatch):
    _FakeProcesses(monkeypatch, index=1, decision="error RuntimeError: Another process is training")
    with pytest.raises(RuntimeError, match=r"Process 0 of 2 cannot start .*Another process is training"):
        _fit(tmp_path / "backup")
    monkeypatch.undo()
    _FakeProcesses(monkeypatch, index=1, decision="ckpt ckpt-00000003-0badc0de.weights.h5")
    with pytest.raises(ValueError, match=r"Process 1 of 2 cannot read the checkpoint that process 0 resumes from"):
        _fit(tmp_path / "backup")
