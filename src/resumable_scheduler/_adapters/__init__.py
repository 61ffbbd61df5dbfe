"""Every private name of Keras, Orbax or CPython that resumable_scheduler
uses, in one package, each pinned by `tests/unit/test_adapters.py`.

- `keras`: `keras.src` internals (saving hooks, the running `fit`'s
  callbacks and epoch iterator, the initial epoch, weight records) and
  Keras's private attributes (`Callback._model`, the monitor helpers, the
  optimizer's rate slot).
- `orbax`: Orbax's private file-layout names.
- `runtime`: CPython's `threading._register_atexit`.

Nothing outside this package imports `keras.src` or `orbax.checkpoint._src`,
or reads a private attribute of a Keras object; a scan in the pin tests fails
on any new one.
"""
