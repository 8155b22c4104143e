"""Drop-rate schedules as a function of training progress t (epochs done / max_epochs)."""

from __future__ import annotations

import math

import pytorch_lightning as pl


def schedule_factor(kind: str, epoch: int, max_epochs: int, gamma: float | None = None,
                    until: float | None = None) -> float:
    """Multiplier f in [0, 1] of each dropout layer's configured rate p at `epoch` (0-based).

    curriculum (Morerio et al. 2017, "Curriculum Dropout"): f(t) = 1 - exp(-gamma * epoch), rising
        from no dropout to the full rate; gamma is per epoch.
    early (Liu et al. 2023, "Dropout Reduces Underfitting"): f = 1 while epoch < until * max_epochs,
        then 0 — dropout only in the first part of training.
    """
    if kind == "constant":
        return 1.0
    if kind == "curriculum":
        return 1.0 - math.exp(-gamma * epoch)
    if kind == "early":
        return 1.0 if epoch < until * max_epochs else 0.0
    raise ValueError(f"unknown dropout schedule {kind!r}: choose constant, curriculum or early")


class DropoutSchedule(pl.Callback):
    def __init__(self, kind: str, max_epochs: int, gamma: float | None = None, until: float | None = None):
        self.kind, self.max_epochs, self.gamma, self.until = kind, max_epochs, gamma, until
        self.base: dict[int, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from regbench.regularizers.layers import dropout_layers

        f = schedule_factor(self.kind, trainer.current_epoch, self.max_epochs, self.gamma, self.until)
        for i, layer in enumerate(dropout_layers(pl_module.net)):
            self.base.setdefault(i, layer.p)
            layer.p = self.base[i] * f
