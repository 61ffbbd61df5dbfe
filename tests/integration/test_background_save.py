"""rs.BackupAndRestore(save_on_background=True): the state is copied once at
the save point, a writer thread commits it, and nothing about the result
differs from a synchronous save."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import harness, timeline
from resumable_scheduler.storage import background
from resumable_scheduler.storage import backup_dir as layout
from resumable_scheduler.storage.local import LocalStore
from tests.support.resume_helpers import (
    EPOCHS, X, Y, BatchLog, InterruptAt, assert_same, documented_schedule, fit, make_model, outcome, run_uninterrupted,
)

# A commit into a directory that became a file cannot remove its temporary
# either (storage.local says so); that is the failure these tests make.
pytestmark = pytest.mark.filterwarnings("ignore:Could not remove the unfinished checkpoint:UserWarning")

POSITIONS = [(0, 3), (4, 1), (10, 0), (12, 3), (14, 4)]


@pytest.fixture(scope="module")
def reference():
    return run_uninterrupted()


class RecordingStore(LocalStore):
    """A real local directory that also keeps every committed object, can
    hold each commit until `gate` is set, and counts concurrent commits."""

    def __init__(self, directory: str, gate: threading.Event | None = None, delay: float = 0.0) -> None:
        super().__init__(directory)
        self.committed: list[tuple[str, bytes]] = []
        self.threads: set[str] = set()
        self.gate = gate
        self.delay = delay
        self.active = 0
        self.most_active = 0

    def commit(self, name: str, data: bytes) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.threads.add(threading.current_thread().name)
            if self.gate is not None:
                assert self.gate.wait(timeout=60), "the gate was never opened"
            if self.delay:
                time.sleep(self.delay)
            super().commit(name, data)
            self.committed.append((name, data))
        finally:
            self.active -= 1


def backup(d, store=None, **kw):
    cb = rs.BackupAndRestore(d, **kw)
    if store is not None:
        cb._store = store
    return cb


def run_with_interrupt(tmp_path, at, save_freq, on_background, slow: float = 0.0):
    d = os.fspath(tmp_path / "backup")
    model = make_model()
    store = RecordingStore(d, delay=slow)
    with pytest.raises(KeyboardInterrupt):
        fit(model, [backup(d, store, save_freq=save_freq, save_on_background=on_background),
                    rs.LearningRateScheduler(documented_schedule), InterruptAt(*at)])
    # The rerun, inside the same process, finds the interrupted fit's last
    # write committed (it waits for it) and goes on from there.
    model = make_model()
    log = BatchLog()
    np.random.seed(12345)
    fit(model, [rs.LearningRateScheduler(documented_schedule),
                rs.BackupAndRestore(d, save_freq=save_freq, save_on_background=on_background), log])
    assert not os.path.exists(d)
    return outcome(model), log, store


@pytest.mark.parametrize("on_background", [True, False])
@pytest.mark.parametrize("save_freq", [1, 2])
@pytest.mark.parametrize("at", POSITIONS)
def test_exception_anywhere_resumes_exactly(tmp_path, reference, at, save_freq, on_background):
    got, log, store = run_with_interrupt(tmp_path, at, save_freq, on_background)
    assert_same(got, reference)
    assert got["iterations"] == 75
    # Written on the writer thread, or on the training thread.
    assert all(n.startswith("rs-backup-writer") == on_background for n in store.threads)


@pytest.mark.parametrize("at", [(3, 2), (6, 0)])
def test_a_callback_exception_leaves_fit_once_the_write_in_flight_is_committed(tmp_path, at):
    # Each write takes 0.3 s; when fit has raised, the newest checkpoint is
    # already the one of the interrupt position, as with synchronous saves.
    d = os.fspath(tmp_path / "backup")
    store = RecordingStore(d, delay=0.3)
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), [backup(d, store, save_freq=1), InterruptAt(*at)])
    ckpt, errors = layout.newest_usable(LocalStore(d))
    assert not errors
    assert (ckpt.doc["position"]["epoch"], ckpt.doc["position"]["batch"]) == at
    assert background._PENDING.get(os.path.abspath(d)) is None


class Batches(keras.utils.PyDataset):
    """The documented data, one sample a batch, in order; raises at the
    `boom`-th batch it is asked for (an error of the data, not of a
    callback: it does not pass through Keras's callbacks)."""

    def __init__(self, boom: int | None = None) -> None:
        super().__init__()
        self.boom, self.served = boom, 0

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i):
        self.served += 1
        if self.served == self.boom:
            raise KeyboardInterrupt(f"data error at batch {i}")
        return X[i:i + 1], Y[i:i + 1]


def test_a_rerun_waits_for_the_write_a_data_error_left_in_flight(tmp_path):
    d = os.fspath(tmp_path / "backup")
    ref = make_model()
    ref.fit(Batches(), epochs=EPOCHS, verbose=0, callbacks=[rs.LearningRateScheduler(documented_schedule)])
    store = RecordingStore(d, delay=0.3)
    interrupted = make_model()
    try:
        interrupted.fit(Batches(boom=33), epochs=EPOCHS, verbose=0,
                         callbacks=[backup(d, store, save_freq=1), rs.LearningRateScheduler(documented_schedule)])
    except KeyboardInterrupt as e:
        assert "data error" in str(e)
        # Still writing while the exception is alive (once it is dropped,
        # the abandoned fit's clean-up waits for the write too).
        pending = background._PENDING.get(os.path.abspath(d))
        assert pending is not None and not pending.done()
    else:
        pytest.fail("the data error did not end fit")
    trained = int(np.asarray(interrupted.optimizer.iterations))
    assert trained >= 30
    model, log = make_model(), BatchLog()
    model.fit(Batches(), epochs=EPOCHS, verbose=0,
              callbacks=[rs.BackupAndRestore(d, save_freq=1), rs.LearningRateScheduler(documented_schedule), log])
    # The rerun waited for it: it resumes after the last batch trained,
    # none twice.
    assert log.rows == [(e, b) for e in range(EPOCHS) for b in range(5)][trained:]
    assert_same(outcome(model), outcome(ref))


@pytest.mark.parametrize("save_freq", [1, 3, "epoch"])
def test_background_checkpoints_are_byte_for_byte_the_synchronous_ones(tmp_path, save_freq, monkeypatch):
    # The timeline holds times, which differ between any two runs.
    monkeypatch.setattr(timeline.Recorder, "commit", lambda self, position: {"segments": []})
    files = {}
    for on_background in (True, False):
        d = os.fspath(tmp_path / f"b{on_background}")
        store = RecordingStore(d)
        keras.backend.clear_session()  # the same layer names in both runs
        model = make_model(dropout=True)
        fit(model, [backup(d, store, save_freq=save_freq, save_on_background=on_background, delete_checkpoint=False),
                    rs.LearningRateScheduler(documented_schedule)], epochs=4)
        files[on_background] = store.committed
    assert len(files[True]) > 3
    assert files[True] == files[False]


class Watch(keras.callbacks.Callback):
    """After the backup's save at the end of `save_at`: records the model's
    values, then lets training run on for a few batches before opening the
    store's gate, so the write serializes while the variables change."""

    def __init__(self, gate: threading.Event, save_at: int, open_at: int) -> None:
        super().__init__()
        self.gate, self.save_at, self.open_at = gate, save_at, open_at
        self.at_save = None
        self.at_open = None

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # synced
        if batch == self.save_at:
            self.at_save = ([np.array(v) for v in model.weights], int(model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.open_at:
            model = self.model
            self.at_open = ([np.array(v) for v in model.weights], int(model.optimizer.iterations))
            self.gate.set()


def test_the_committed_checkpoint_holds_the_save_point_values_while_training_went_on(tmp_path):
    d = os.fspath(tmp_path / "backup")
    gate = threading.Event()
    store = RecordingStore(d, gate=gate)
    model = make_model()
    x = np.random.default_rng(0).standard_normal((40, 20)).astype("float32")
    y = np.zeros((40, 10), "float32")
    watch = Watch(gate, save_at=2, open_at=5)
    # save_freq=3: saves after batches 2, 5, 8; the first write is held
    # until batch 5 begins, three batches later.
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0,
              callbacks=[backup(d, store, save_freq=3, delete_checkpoint=False), watch])
    assert watch.at_open[1] == watch.at_save[1] + 2  # two more batches were trained
    assert any(not np.array_equal(a, b) for a, b in zip(watch.at_save[0], watch.at_open[0]))
    name, data = store.committed[0]
    ckpt = layout.read_checkpoint_data(store.describe(name), data)
    assert ckpt.doc["position"] == {"epoch": 0, "batch": 3, "step": 3}
    fresh = make_model(seed=7)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(ckpt.weights())  # plain Keras reads it
    assert int(fresh.optimizer.iterations) == watch.at_save[1] == 3
    for a, b in zip(watch.at_save[0], fresh.weights):
        assert np.array_equal(a, np.array(b))
    # Saves after batches 2, 5 and 8; the end of fit committed the last one
    # before returning.
    assert [int(n.split("-")[1]) for n, _ in store.committed] == [0, 1, 2]
    last = layout.read_checkpoint_data(store.describe(store.committed[-1][0]), store.committed[-1][1])
    assert last.doc["position"] == {"epoch": 0, "batch": 9, "step": 9}
    assert layout.checkpoint_names(store) == [store.committed[-1][0]]


def test_one_write_in_flight_and_the_end_of_fit_waits_for_the_last(tmp_path):
    d = os.fspath(tmp_path / "backup")
    store = RecordingStore(d, delay=0.05)
    model = make_model()
    fit(model, [backup(d, store, save_freq=1, delete_checkpoint=False)], epochs=3)
    assert store.most_active == 1
    assert len(store.committed) == 15
    newest = layout.newest_usable(LocalStore(d))[0]
    assert newest.doc["position"] == {"epoch": 3, "batch": 0, "step": 15}
    assert background._PENDING.get(os.path.abspath(d)) is None


class BreakDirAt(keras.callbacks.Callback):
    """At the start of batch `batch` of epoch `epoch`, replaces the backup
    directory by a plain file: every later commit fails for real (ENOTDIR)."""

    def __init__(self, d: str, epoch: int, batch: int) -> None:
        super().__init__()
        self.d, self.at, self.epoch = d, (epoch, batch), -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            background.join_for(os.path.abspath(self.d))  # the write before it is done
            shutil.rmtree(self.d)
            with open(self.d, "w") as f:
                f.write("not a directory")


class Saves(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, int]] = []
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((self.epoch, batch))


@pytest.mark.parametrize("on_background", [True, False])
def test_a_failed_write_raises_in_the_training_thread_at_the_next_save_point(tmp_path, on_background):
    d = os.fspath(tmp_path / "backup")
    seen = Saves()
    with pytest.raises(OSError, match="Cannot write a checkpoint"):
        fit(make_model(), [BreakDirAt(d, 1, 2), rs.BackupAndRestore(d, save_freq=1, save_on_background=on_background),
                           seen], epochs=3)
    # The write of batch (1, 2) fails. Synchronously, at its own save point
    # (the batch end callbacks after the backup never see it); in the
    # background, at the next save point, after batch (1, 3).
    assert seen.batches[-1] == ((1, 2) if on_background else (1, 1))


def test_a_failed_last_write_raises_at_the_end_of_fit(tmp_path):
    d = os.fspath(tmp_path / "backup")
    model = make_model()
    seen = Saves()
    with pytest.raises(OSError, match="Cannot write a checkpoint"):
        # The epoch-end write of the last epoch fails while fit ends.
        fit(model, [BreakDirAt(d, 1, 4), rs.BackupAndRestore(d, save_freq="epoch"), seen], epochs=2)
    assert seen.batches[-1] == (1, 4)  # every batch was trained; the error came at the end


def test_a_failed_write_of_a_fit_that_raised_is_warned_by_the_rerun(tmp_path):
    d = os.fspath(tmp_path / "backup")
    gate = threading.Event()
    store = RecordingStore(d, gate=gate)

    class Sabotage(keras.callbacks.Callback):
        # The write of (0, 2) is held at the gate; the directory becomes a
        # file, the gate opens, and fit raises before the next save point.
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:
                shutil.rmtree(d)
                with open(d, "w") as f:
                    f.write("x")
                gate.set()
                raise KeyboardInterrupt

    # Whoever waits for the failed write first (the abandoned fit's clean-up
    # or the rerun) warns; nothing is lost.
    with pytest.warns(UserWarning, match=r"background save .* failed: (OSError|NotADirectoryError)"):
        with pytest.raises(KeyboardInterrupt):
            fit(make_model(), [backup(d, store, save_freq=3), Sabotage()], epochs=1)
        background.join_for(os.path.abspath(d))
        os.remove(d)
        fit(make_model(), [rs.BackupAndRestore(d, save_freq=3)], epochs=1)


def test_pending_writes_finish_when_the_program_ends(tmp_path):
    d = os.fspath(tmp_path / "backup")
    script = textwrap.dedent(f"""
        import os, sys, time
        os.environ.setdefault("KERAS_BACKEND", "jax")
        sys.path.insert(0, {os.getcwd()!r})
        import keras, numpy as np
        import resumable_scheduler as rs
        from resumable_scheduler.storage.local import LocalStore
        from tests.support.resume_helpers import make_model, fit

        class Boom(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                if (self.epoch, batch) == (2, 3):
                    raise RuntimeError("the program ends here")

        class Slow(LocalStore):
            def commit(self, name, data):
                time.sleep(0.5)
                super().commit(name, data)

        cb = rs.BackupAndRestore({d!r}, save_freq=1)
        cb._store = Slow({d!r})
        fit(make_model(), [cb, Boom()])  # raises: the program ends with it
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 1 and "the program ends here" in res.stderr, res.stderr[-2000:]
    ckpt, errors = layout.newest_usable(LocalStore(d))
    assert not errors
    assert ckpt.doc["position"] == {"epoch": 2, "batch": 3, "step": 13}


def test_save_on_background_is_the_default_and_a_constructor_argument():
    import inspect

    param = inspect.signature(rs.BackupAndRestore).parameters["save_on_background"]
    assert param.default is True
    assert rs.BackupAndRestore("unused", save_on_background=False).save_on_background is False
    doc = rs.BackupAndRestore.__doc__
    assert "at most one extra host copy" in doc


def test_sigterm_commits_the_preemption_checkpoint_before_exiting(tmp_path):
    # Every write takes 0.3 s; the preemption checkpoint is the newest on
    # disk when the process has exited, at the batch after the last trained.
    d = os.fspath(tmp_path / "backup")
    script = textwrap.dedent(f"""
        import os, sys, time
        os.environ.setdefault("KERAS_BACKEND", "jax")
        sys.path.insert(0, {os.getcwd()!r})
        import keras, numpy as np
        import resumable_scheduler as rs
        from resumable_scheduler.storage.local import LocalStore
        from tests.support.resume_helpers import make_model, fit

        class Slow(LocalStore):
            def commit(self, name, data):
                time.sleep(0.3)
                super().commit(name, data)

        class Say(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                print("batch", self.epoch, batch, flush=True)
                time.sleep(0.05)

        cb = rs.BackupAndRestore({d!r}, save_freq=1)
        cb._store = Slow({d!r})
        fit(make_model(), [cb, Say()])
    """)
    with harness.Child([sys.executable, "-c", script], env={**os.environ, "JAX_PLATFORMS": "cpu"}) as child:
        child.wait_for(lambda p: (p.epoch, p.batch) == (1, 2), timeout=300)
        code, _, escalated = child.stop(signal.SIGTERM, grace=120)
        harness.drain(child)
        assert code == rs.PREEMPTED_EXIT_CODE and not escalated, child.stderr_tail()
    epoch, batch = child.progress.epoch, child.progress.batch  # the last batch trained
    want = (epoch, batch + 1) if batch < 4 else (epoch + 1, 0)  # 5 batches an epoch
    ckpt, errors = layout.newest_usable(LocalStore(d))
    assert not errors
    assert (ckpt.doc["position"]["epoch"], ckpt.doc["position"]["batch"]) == want


def test_read_state_in_the_same_process_sees_the_write_a_data_error_left_in_flight(tmp_path):
    d = os.fspath(tmp_path / "backup")
    store = RecordingStore(d, delay=0.3)
    interrupted = make_model()
    try:
        interrupted.fit(Batches(boom=33), epochs=EPOCHS, verbose=0,
                         callbacks=[backup(d, store, save_freq=1), rs.LearningRateScheduler(documented_schedule)])
    except KeyboardInterrupt:
        pending = background._PENDING.get(os.path.abspath(d))
        assert pending is not None and not pending.done()
        # Read while the exception (and the write) is still alive.
        state = rs.read_state(d)
        trained = int(np.asarray(interrupted.optimizer.iterations))
        assert state["step"] == trained  # the last batch trained is committed
    else:
        pytest.fail("the data error did not end fit")
