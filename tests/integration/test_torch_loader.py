"""torch `DataLoader` inputs on the torch backend resume exactly (issue 10).

A map-style dataset read with `shuffle=True` and a seeded `generator`, or
with `shuffle=False`, interrupted mid-epoch, at the last batch of an epoch
or at the first of the next, ends bit for bit like a run never interrupted,
and the resumed epoch never loads a sample of the batches it skips. An
iterable-style loader reruns the interrupted epoch, with one warning.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("torch DataLoader positioning is for the torch backend", allow_module_level=True)

import resumable_scheduler as rs  # noqa: E402
from tests.support.resume_helpers import (  # noqa: E402
    InterruptAt, assert_same, documented_schedule, make_model, outcome,
)

N, BATCH, EPOCHS = 10, 2, 4  # 5 batches an epoch
X = (np.arange(N * 20, dtype="float32").reshape(N, 20) / 200)
Y = np.linspace(0, 1, N * 10, dtype="float32").reshape(N, 10)
# mid-epoch, last batch of an epoch, first batch of the next; in the first
# epoch of the process too (the recorder missed its start).
POSITIONS = [(0, 2), (1, 3), (1, 4), (2, 0), (2, 3)]


class Recording(torch.utils.data.Dataset):
    """Serves (x, y) rows and records every index it loads."""

    def __init__(self, n=N):
        self.n, self.loaded = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loaded.append(int(i))
        return X[i % N], Y[i % N]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(N):
            yield X[i], Y[i]


def loader(shuffle, dataset=None, batch_size=BATCH, seed=0):
    return torch.utils.data.DataLoader(
        dataset if dataset is not None else Recording(), batch_size=batch_size, shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed))


class Served(keras.callbacks.Callback):
    """Per trained batch: the indices the dataset loaded for it."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.rows, self.epoch = dataset, [], -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.rows.append((self.epoch, batch, tuple(self.dataset.loaded[-BATCH:])))


def run(callbacks, data, epochs=EPOCHS):
    model = make_model()
    model.fit(data, epochs=epochs, callbacks=callbacks, verbose=0)
    return model


@pytest.fixture(scope="module")
def reference():
    out = {}
    for shuffle in (True, False):
        data = loader(shuffle)
        served = Served(data.dataset)
        model = run([rs.LearningRateScheduler(documented_schedule), served], data)
        out[shuffle] = (outcome(model), served.rows)
    return out


def interrupted(tmp_path, at, shuffle, data=None):
    d = os.fspath(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        run([rs.BackupAndRestore(d, save_freq=1), rs.LearningRateScheduler(documented_schedule),
             InterruptAt(*at)], loader(shuffle))
    data = data if data is not None else loader(shuffle)
    data.generator.manual_seed(999)  # whatever it is now, the backup decides
    served = Served(data.dataset)
    model = run([rs.LearningRateScheduler(documented_schedule), rs.BackupAndRestore(d, save_freq=1), served], data)
    return outcome(model), served.rows, data.dataset


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("at", POSITIONS)
def test_interrupted_anywhere_resumes_exactly(tmp_path, reference, at, shuffle):
    got, rows, dataset = interrupted(tmp_path, at, shuffle)
    want, want_rows = reference[shuffle]
    assert_same(got, want)
    assert got["iterations"] == EPOCHS * N // BATCH
    # The resumed batches are the reference's, in the same order...
    assert rows == [r for r in want_rows if r[:2] >= at]
    # ...and the skipped batches of the resumed epoch were never loaded.
    resumed_epoch = [i for e, b, idx in want_rows if e == at[0] and b >= at[1] for i in idx]
    skipped = [i for e, b, idx in want_rows if e == at[0] and b < at[1] for i in idx]
    first_epoch_loads = dataset.loaded[BATCH:BATCH + len(resumed_epoch)]  # after Keras's build batch
    assert first_epoch_loads == resumed_epoch
    if at[1]:
        assert len(skipped) == at[1] * BATCH


def test_the_orders_differ_between_epochs(reference):
    rows = reference[True][1]
    assert rows[0][2] != rows[N // BATCH][2]


@pytest.mark.parametrize("change, text", [
    # Fewer batches an epoch: refused by data.check_resumed_input, naming the
    # steps (it does not know a DataLoader's batch size yet).
    ({"batch_size": 5}, "5 steps per epoch then, 2 now"),
    ({"dataset": Recording(13)}, "5 steps per epoch then, 7 now"),
    # Same number of batches: refused by the positioner, naming both values.
    ({"dataset": Recording(9)}, "samples=10 then, 9 now"),
])
def test_a_changed_loader_is_refused_naming_both_values(tmp_path, change, text):
    d = os.fspath(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        run([rs.BackupAndRestore(d, save_freq=1), InterruptAt(1, 2)], loader(True))
    with pytest.raises(ValueError) as e:
        run([rs.BackupAndRestore(d, save_freq=1)], loader(True, **change))
    assert text in str(e.value)


def test_an_iterable_loader_warns_once_and_reruns_the_epoch(tmp_path):
    d = os.fspath(tmp_path / "backup")
    data = torch.utils.data.DataLoader(Stream(), batch_size=BATCH)
    with pytest.raises(KeyboardInterrupt):
        run([rs.BackupAndRestore(d, save_freq=1), InterruptAt(1, 2)], data)
    log = Served(Recording())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = run([rs.BackupAndRestore(d, save_freq=1), log], data)
    ours = [x for x in w if "cannot be positioned" in str(x.message)]
    assert len(ours) == 1
    assert [r[:2] for r in log.rows][:3] == [(1, 0), (1, 1), (1, 2)]  # the epoch runs again
