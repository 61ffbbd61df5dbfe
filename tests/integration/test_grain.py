"""grain inputs (MapDataset, IterDataset; shuffled, with a random map) resume
bit for bit at the first batch not yet trained, reading no element of the
batches they skip; a changed batch size or length is refused by name."""

from __future__ import annotations

import os
import re
import threading

import keras
import numpy as np
import pytest

grain = pytest.importorskip("grain")

import resumable_scheduler as rs  # noqa: E402
from tests.support.resume_helpers import (  # noqa: E402
    InterruptAt, assert_same, documented_schedule, make_model, outcome,
)

N, BS, EPOCHS = 24, 4, 4  # 6 batches per epoch
SRC = np.arange(200 * 20, dtype="float32").reshape(200, 20) / 4000
_LOCK = threading.Lock()


class Reads(list):
    """The elements one pipeline read (grain reads ahead on threads; the
    threads of an interrupted fit's pipeline may still be reading, into
    their own list)."""

    def __call__(self, i):
        with _LOCK:
            self.append(int(i))
        return SRC[i], np.full(10, 0.01 * (int(i) % 7), dtype="float32")


def _noise(e, r):
    return e[0] + r.normal(size=20).astype("float32") * 0.01, e[1]


def pipeline(kind: str, n: int = N, bs: int = BS, reads: Reads | None = None):
    """Freshly built each time, as a restarted process would."""
    ds = grain.MapDataset.range(n).shuffle(seed=7).map(reads if reads is not None else Reads())
    if kind == "map":
        return ds.random_map(_noise, seed=3).batch(bs)
    return ds.to_iter_dataset().random_map(_noise, seed=3).batch(bs)


def fit(kind, callbacks, **kw):
    model = make_model()
    model.fit(pipeline(kind, **kw), epochs=EPOCHS, callbacks=callbacks, verbose=0)
    return model


@pytest.fixture(scope="module")
def reference():
    return {k: outcome(fit(k, [rs.LearningRateScheduler(documented_schedule)])) for k in ("map", "iter")}


def interrupt(tmp_path, kind, at, **kw):
    d = os.fspath(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(kind, [rs.BackupAndRestore(d, save_freq=1), rs.LearningRateScheduler(documented_schedule),
                   InterruptAt(*at)], **kw)
    return d


def resume(d, kind, **kw):
    return fit(kind, [rs.LearningRateScheduler(documented_schedule), rs.BackupAndRestore(d, save_freq=1)], **kw)


# (epoch, batch): inside an epoch, the last batch of one, the first of the
# next (the interruption before it trained: at its epoch's start), and later.
POSITIONS = [(0, 2), (1, 5), (2, 0), (2, 1), (3, 4)]


class FirstEpochReads(keras.callbacks.Callback):
    """The elements its pipeline read while the first epoch of a fit
    trained, taken at the end of that epoch's last batch (before Keras makes
    the next epoch's iterator, whose threads start reading ahead)."""

    def __init__(self, reads):
        super().__init__()
        self.all, self.start, self.reads = reads, None, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.start is None:
            # After Keras's look at the data before training: its iterator's
            # threads read ahead, so wait until they are done (the epoch's
            # own iterator is made after this hook).
            import time

            seen, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 5.0
            while time.monotonic() < deadline:
                with _LOCK:
                    now = len(self.all)
                if now != seen:
                    seen, quiet_since = now, time.monotonic()
                elif time.monotonic() - quiet_since > 0.2:
                    break
                time.sleep(0.01)
            with _LOCK:
                self.start = len(self.all)

    def on_train_batch_end(self, batch, logs=None):
        if self.reads is None and batch == N // BS - 1:
            with _LOCK:
                self.reads = sorted(self.all[self.start:])


ORDER = [int(i) for i in grain.MapDataset.range(N).shuffle(seed=7)]


@pytest.mark.parametrize("kind", ["map", "iter"])
@pytest.mark.parametrize("at", POSITIONS)
def test_resumes_bit_for_bit_reading_no_skipped_element(tmp_path, reference, kind, at):
    d = interrupt(tmp_path, kind, at)
    reads = Reads()
    window = FirstEpochReads(reads)
    model = fit(kind, [rs.LearningRateScheduler(documented_schedule), rs.BackupAndRestore(d, save_freq=1),
                       window], reads=reads)
    got = outcome(model)
    assert_same(got, reference[kind])
    assert got["iterations"] == EPOCHS * N // BS
    assert not os.path.exists(d)
    # The resumed epoch reads the elements of its remaining batches, no more.
    assert window.reads == sorted(ORDER[at[1] * BS:])


def _message(then, now, want):
    return re.escape(
        f"Cannot resume the grain input at batch 3: it is not the input the checkpoint was "
        f"written with: {then} then, {now} now. Its position counts batches of that input, so "
        f"this fit would train the wrong samples. Rerun with {want} as when the checkpoint "
        "was written, or delete the checkpoint to start over."
    )


@pytest.mark.parametrize("kind", ["map", "iter"])
def test_changed_batch_size_is_refused(tmp_path, kind):
    d = interrupt(tmp_path, kind, (1, 3))
    with pytest.raises(ValueError, match=_message("batch_size=4", "3", "batch_size=4")):
        resume(d, kind, bs=3)


def test_changed_length_is_refused(tmp_path):
    d = interrupt(tmp_path, "map", (1, 3))
    with pytest.raises(ValueError, match=_message("6 batches per epoch", "5", "a dataset of 6 batches")):
        resume(d, "map", n=20)


def test_changed_source_of_an_iter_dataset_is_refused(tmp_path):
    d = interrupt(tmp_path, "iter", (1, 3))
    with pytest.raises(ValueError, match=_message("24 source elements", "20", "the same 24 source elements")):
        resume(d, "iter", n=20)
