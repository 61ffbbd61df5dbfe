"""What `rs.ReduceLROnPlateau` and `rs.EarlyStopping` share: when their state
resets, when it carries on, and the checks around a resume.

`on_train_begin` resets the state, as Keras does (so one instance can be
reused, and hooks driven by hand behave as Keras's), after setting aside
what it held. The first epoch of the `fit` (its first `on_epoch_begin`, or
`on_epoch_end` / `on_train_end` when the hooks are driven by hand) then
decides what carries on:

- a state handed over by `set_state` (by `rs.restore`, a backup, or
  `load_weights`), before `on_train_begin` or since, carries on, whatever
  the first epoch;
- otherwise a `fit` that starts at epoch 0 is a new run: the reset stands;
- otherwise (`initial_epoch > 0`, same process, or no epoch left to run)
  the run continues: the state set aside at `on_train_begin` comes back.

Only what describes a single `fit` resets every time (`stopped_epoch` of
`EarlyStopping`).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from resumable_scheduler._adapters import keras as ki

from resumable_scheduler._adapters.keras import sync_model_state
from resumable_scheduler.tracker import tracker_for


class RunStateMixin:
    """Bookkeeping for a resumable monitor callback (mixed into a Keras callback).

    The host class provides `state_key`, `_run_attrs` (the attributes of its
    state, set aside at `on_train_begin`), `_reset_run()` (the Keras reset),
    `_reset_fit()` (what resets at every fit) and `_settled()` (called once
    the first epoch has decided), and keeps `_epoch`, the number of epoch
    ends it has processed.
    """

    _model: Any
    params: dict
    state_key: str
    _run_attrs: tuple[str, ...] = ()

    def _init_run_state(self) -> None:
        self._epoch = 0
        self._restored = False  # set_state since the last on_train_begin
        self._first_epoch = False  # the fit's first epoch has not decided yet
        self._set_aside: tuple[dict[str, Any], bool] | None = None
        self._in_fit = False
        self._in_epoch = False
        self._epoch_begin_step: int | None = None
        self._warned_stale = False

    # -- hooks for the host class -----------------------------------------------

    def _reset_run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _reset_fit(self) -> None:
        pass

    def _settled(self) -> None:
        pass

    # -- lifecycle ----------------------------------------------------------------

    def _attach(self, model: Any) -> None:
        """Called from `set_model`, at the start of every fit."""
        self._in_fit = self._in_epoch = False  # a fit that raised left them set
        tracker_for(model).register(self)

    def _mark_restored(self) -> None:
        self._restored = True

    def _begin_fit(self) -> None:
        """`on_train_begin`: set the state aside, then reset it as Keras does."""
        self._in_fit = True
        self._first_epoch = True
        self._warned_stale = False
        self._set_aside = ({a: getattr(self, a) for a in self._run_attrs}, self._restored)
        self._restored = False
        self._reset_run()
        self._epoch = 0
        self._reset_fit()

    def _settle(self, epoch: int | None) -> None:
        """The fit's first epoch (None: the fit ran none) decides what
        carries on (see the module docstring)."""
        if not self._first_epoch:
            return
        self._first_epoch = False
        aside, self._set_aside = self._set_aside, None
        saved, restored_before = aside if aside is not None else ({}, False)
        restored = self._restored
        self._restored = False
        # No epoch ran (None): the fit started at or past its `epochs`, so it
        # continued a run.
        if not restored and (restored_before or epoch is None or epoch > 0):
            for name, value in saved.items():
                setattr(self, name, value)
            restored = restored_before
        if restored and epoch is not None and self._epoch != epoch:
            warnings.warn(
                f"{type(self).__name__}: the restored state was taken after "
                f"{self._epoch} epoch(s), but this fit starts at epoch {epoch}. "
                "Its decisions will differ from an uninterrupted run; pass "
                f"`initial_epoch={self._epoch}` (what `rs.restore` returns).",
                UserWarning,
                stacklevel=4,
            )
        self._reset_fit()
        self._settled()

    def _begin_epoch(self, epoch: int) -> None:
        self._settle(epoch)
        self._in_epoch = True
        self._epoch_begin_step = self._iterations()

    def _end_epoch(self, epoch: int) -> None:
        self._epoch = epoch + 1
        self._in_epoch = False

    def _end_fit(self) -> None:
        self._settle(None)
        self._in_fit = False
        self._in_epoch = False

    # -- helpers --------------------------------------------------------------------

    def _iterations(self) -> int | None:
        model = ki.model_of(self)
        opt = getattr(model, "optimizer", None)
        if opt is None:
            return None
        return int(keras.ops.convert_to_numpy(opt.iterations))

    def _sync(self) -> Any:
        """The model with its in-flight (JAX) state written back, or None."""
        model = ki.model_of(self)
        if model is not None:
            sync_model_state(model)
        return model

    def _check_stale(self) -> None:
        """Warns when a checkpoint is taken after the last batch of an epoch
        but before this callback has seen that epoch's logs."""
        if not self._in_epoch or self._warned_stale or self._epoch_begin_step is None:
            return
        model = ki.model_of(self)
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
