"""Pins the private Keras and torch internals in
`resumable_scheduler/_adapters/keras_torch.py` (the torch DataLoader
positioner). Each failure names the internal that changed."""

import inspect

import keras
import pytest

torch = pytest.importorskip("torch")

from resumable_scheduler._adapters import keras_torch as kt  # noqa: E402
from tests.support import pins  # noqa: E402

PINNED = {
    "torch_loader_adapter_class": "test_torch_loader_adapter_class",
    "live_loader_iterator": "test_fit_reads_a_live_loader_iterator_and_its_unserved_batches",
    "take_unserved_batches": "test_fit_reads_a_live_loader_iterator_and_its_unserved_batches",
    "draw_loader_base_seed": "test_iter_loader_draws_one_base_seed_before_its_sampler",
}


def internal(what):
    return pins.internal(what, "keras_torch.py", f", torch {torch.__version__}")


def test_every_internal_has_a_pin():
    public = {n for n, v in vars(kt).items() if not n.startswith("_")
              and inspect.isfunction(v) and v.__module__ == kt.__name__}
    assert public == set(PINNED)
    assert set(PINNED.values()) <= {n for n in globals() if n.startswith("test_")}


def loader(n=10, batch_size=2):
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(n, 1))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def test_torch_loader_adapter_class():
    with internal("keras.src.trainers.data_adapters.torch_data_loader_adapter.TorchDataLoaderAdapter"):
        from keras.src.trainers.data_adapters import get_data_adapter

        data = loader()
        adapter = get_data_adapter(data)
        assert isinstance(adapter, kt.torch_loader_adapter_class())
        assert adapter.get_torch_dataloader() is data


def test_fit_reads_a_live_loader_iterator_and_its_unserved_batches():
    with internal("fit's local `epoch_iterator`, EpochIterator._current_iterator, "
                  "DataLoader iterator `_sampler_iter` / `_num_yielded`"):
        data = loader()
        seen = {}

        class Probe(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 1 and "rest" not in seen:
                    frame_it = kt.live_loader_iterator(self.adapter)
                    before = data.generator.get_state()
                    seen["served"], seen["rest"] = kt.take_unserved_batches(frame_it, 5)
                    seen["drew"] = not torch.equal(before, data.generator.get_state())

            def on_train_begin(self, logs=None):
                from resumable_scheduler._adapters import keras as ki

                self.adapter = ki.running_epoch_iterator(self.model).data_adapter

        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        if keras.backend.backend() != "torch":
            pytest.skip("the live DataLoader iterator is the torch backend's")
        data.generator.manual_seed(0)
        model.fit(data, epochs=1, verbose=0, callbacks=[Probe()], shuffle=False)
        assert seen["served"] == 2
        assert len(seen["rest"]) == 3 and all(len(b) == 2 for b in seen["rest"])
        assert len({i for b in seen["rest"] for i in b}) == 6
        # Reading them did not draw from the generator (no second permutation).
        assert not seen["drew"]


def test_iter_loader_draws_one_base_seed_before_its_sampler():
    """An epoch-end checkpoint replays this draw (`_BaseDataLoaderIter.__init__`'s
    `_base_seed`): `iter(loader)` takes exactly one int64 from
    `loader.generator`, and its sampler starts only at the first batch."""
    with internal("torch DataLoader: iter(loader) draws one base seed from loader.generator"):
        data = torch.utils.data.TensorDataset(torch.arange(6.0))
        gen = torch.Generator().manual_seed(3)
        loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, generator=gen)
        expected = torch.Generator().manual_seed(3)
        kt.draw_loader_base_seed(expected)
        it = iter(loader)
        assert torch.equal(gen.get_state(), expected.get_state())
        next(it)  # now the sampler draws its order
        assert not torch.equal(gen.get_state(), expected.get_state())
