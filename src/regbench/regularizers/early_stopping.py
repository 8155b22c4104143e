"""Lightning side of early stopping: one callback that drives any criterion of ``criteria``.

Every early-stopping arm, Lightning-style patience included, goes through
:class:`CriterionStopping`, so all of them read the same metrics at the same moment and
record their decision the same way (``stopped_epoch``, ``reason``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from regbench.regularizers.criteria import Criterion

__all__ = ["CriterionStopping", "one_minus"]


def one_minus(v: float) -> float:
    """An accuracy from the error the criteria minimise (a module-level function: picklable)."""
    return 1.0 - v


class CriterionStopping(pl.Callback):
    """Stop training when ``criterion.update(val, train)`` says so.

    Args:
        criterion: a :class:`~regbench.regularizers.criteria.Criterion` (Patience, GL, PQ, UP).
        monitor: the validation metric in ``trainer.callback_metrics``.
        mode: ``"min"`` if ``monitor`` is to be minimised (a loss, an error rate);
            ``"max"`` for an accuracy-like score in [0, 1], which is turned into the error
            ``1 - value`` (the criteria minimise, and GL/PQ are ratios of errors).
        train_monitor: the epoch's training loss in ``trainer.callback_metrics`` (needed by
            PQ; passed to the others when present).

    When the metrics are read: once per epoch, in ``on_train_epoch_end``, from
    ``callback_metrics[monitor]`` and ``[train_monitor]``. By then both hold this epoch's
    values, whether they were logged in the training step (regbench's ``Classifier`` evaluates
    the validation split at the end of its one-batch epoch), in a validation loop, or as
    ``on_epoch=True`` aggregates (Lightning's ``EarlyStopping(check_on_train_epoch_end=True)``
    reads them at the same point). Place ``PeriodicCheckpoint`` after this callback so that a
    checkpoint holds the updated criterion.

    After a stop: ``trainer.should_stop`` is set, ``stopped_epoch`` is
    ``trainer.current_epoch`` (0-based) of the epoch that fired, and ``reason`` the
    criterion's reason, in terms of ``monitor`` as logged (an accuracy, not its error) and
    0-based epochs; both are None until then. ``state_dict`` carries
    the criterion's state, these two and any pending validation value.
    """

    def __init__(self, criterion: Criterion, monitor: str = "val/loss", mode: str = "min",
                 train_monitor: str = "train/loss"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is invalid: must be 'min' or 'max'")
        if not isinstance(criterion, Criterion):
            raise TypeError(f"criterion must be a regbench Criterion, got {type(criterion).__name__}")
        self.criterion = criterion
        criterion.describe_as(monitor, one_minus if mode == "max" else None)
        self.monitor = monitor
        self.mode = mode
        self.train_monitor = train_monitor
        self.stopped_epoch: int | None = None
        self.reason: str | None = None

    def __repr__(self) -> str:
        return (f"CriterionStopping({self.criterion!r}, monitor={self.monitor!r}, mode={self.mode!r}, "
                f"train_monitor={self.train_monitor!r})")

    @property
    def state_key(self) -> str:
        # distinct keys let several stopping callbacks live in one checkpoint
        return self._generate_state_key(criterion=repr(self.criterion), monitor=self.monitor, mode=self.mode)

    # -- hooks ------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = self._read(trainer, self.monitor)
        val = 1.0 - value if self.mode == "max" else value
        train = None
        if self.train_monitor in trainer.callback_metrics:
            train = self._read(trainer, self.train_monitor)
        elif self.criterion.needs_train:
            self._read(trainer, self.train_monitor)  # raises with the list of available metrics
        fired = self.criterion.update(val, train)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None:
            # every rank must take the same decision (metrics are synced, but be safe)
            fired = bool(strategy.reduce_boolean_decision(fired, all=False))
        if fired:
            trainer.should_stop = True
            if self.stopped_epoch is None:
                self.stopped_epoch = int(trainer.current_epoch)
                self.reason = self.criterion.reason or f"stopped on another rank at epoch {self.stopped_epoch}"

    # -- checkpointing ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion.state_dict(),
            "stopped_epoch": self.stopped_epoch,
            "reason": self.reason,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state_dict["criterion"])
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.reason = state_dict["reason"]

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _read(trainer: pl.Trainer, key: str) -> float:
        metrics = trainer.callback_metrics
        if key not in metrics:
            raise RuntimeError(
                f"CriterionStopping: metric {key!r} is not in trainer.callback_metrics "
                f"(available: {sorted(metrics)}); log it before the training epoch ends"
            )
        value = metrics[key]
        return float(value.item() if hasattr(value, "item") else value)
