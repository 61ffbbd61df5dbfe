"""What `rs.ReduceLROnPlateau` and `rs.EarlyStopping` share: when their state
resets, when it carries on, and the checks around a resume.

The rule, decided at the first epoch of every `fit`:

- a state handed over by `set_state` since the last `fit` (by `rs.restore`,
  a backup, or `load_weights`) carries on, whatever the first epoch;
- otherwise a `fit` that starts at epoch 0 is a new run: the state resets,
  as Keras resets it in `on_train_begin` (so one instance can be reused);
- otherwise (`initial_epoch > 0`, same process) the run continues: the state
  left by the previous `fit` carries on.

Only what describes a single `fit` resets every time (`stopped_epoch` of
`EarlyStopping`).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from resumable_scheduler._keras_internals import sync_model_state
from resumable_scheduler.tracker import tracker_for


class RunStateMixin:
    """Bookkeeping for a resumable monitor callback (mixed into a Keras callback).

    The host class provides `state_key`, `_reset_run()` (the Keras reset) and
    `_reset_fit()` (what resets at every fit), and keeps `_epoch`, the number
    of epoch ends it has processed.
    """

    _model: Any
    params: dict
    state_key: str

    def _init_run_state(self) -> None:
        self._epoch = 0
        self._restored = False  # set_state since the last fit began
        self._first_epoch = False  # the next on_epoch_begin is the fit's first
        self._in_fit = False
        self._in_epoch = False
        self._epoch_begin_step: int | None = None
        self._warned_stale = False

    # -- hooks for the host class -----------------------------------------------

    def _reset_run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _reset_fit(self) -> None:
        pass

    # -- lifecycle ----------------------------------------------------------------

    def _attach(self, model: Any) -> None:
        """Called from `set_model`, at the start of every fit."""
        self._in_fit = self._in_epoch = False  # a fit that raised left them set
        tracker_for(model).register(self)

    def _mark_restored(self) -> None:
        self._restored = True

    def _begin_fit(self) -> None:
        self._in_fit = True
        self._first_epoch = True
        self._warned_stale = False
        self._reset_fit()

    def _begin_epoch(self, epoch: int) -> None:
        if self._first_epoch:
            self._first_epoch = False
            restored, self._restored = self._restored, False
            if restored:
                if self._epoch != epoch:
                    warnings.warn(
                        f"{type(self).__name__}: the restored state was taken after "
                        f"{self._epoch} epoch(s), but this fit starts at epoch {epoch}. "
                        "Its decisions will differ from an uninterrupted run; pass "
                        f"`initial_epoch={self._epoch}` (what `rs.restore` returns).",
                        UserWarning,
                        stacklevel=3,
                    )
            elif epoch == 0:
                self._reset_run()
                self._epoch = 0
            self._reset_fit()
        self._in_epoch = True
        self._epoch_begin_step = self._iterations()

    def _end_epoch(self, epoch: int) -> None:
        self._epoch = epoch + 1
        self._in_epoch = False

    def _end_fit(self) -> None:
        self._in_fit = False
        self._in_epoch = False

    # -- helpers --------------------------------------------------------------------

    def _iterations(self) -> int | None:
        model = getattr(self, "_model", None)
        opt = getattr(model, "optimizer", None)
        if opt is None:
            return None
        return int(keras.ops.convert_to_numpy(opt.iterations))

    def _sync(self) -> Any:
        """The model with its in-flight (JAX) state written back, or None."""
        model = getattr(self, "_model", None)
        if model is not None:
            sync_model_state(model)
        return model

    def _check_stale(self) -> None:
        """Warns when a checkpoint is taken after the last batch of an epoch
        but before this callback has seen that epoch's logs."""
        if not self._in_epoch or self._warned_stale or self._epoch_begin_step is None:
            return
        model = getattr(self, "_model", None)
        if model is not None and self.state_key in tracker_for(model).epoch_end_replayed:
            return  # the resumed run replays this epoch end (rs checkpoints)
        steps = self.params.get("steps") if self.params else None
        now = self._iterations()
        if steps and now is not None and now - self._epoch_begin_step >= steps:
            self._warned_stale = True
            warnings.warn(
                f"{type(self).__name__}: a checkpoint was written at the end of epoch "
                f"{self._epoch} before this callback saw that epoch's logs, so it "
                "misses this epoch's decision (a run resumed from it will differ). "
                f"Put rs.{type(self).__name__} before the checkpointing callback in "
                "`callbacks` (rs.BackupAndRestore needs no particular order).",
                UserWarning,
                stacklevel=4,
            )
