"""Drop-rate schedules as a function of training progress t (epochs done / max_epochs)."""

from __future__ import annotations

import math

from dataclasses import dataclass


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


@dataclass(frozen=True)
class DropoutSchedule:
    """A schedule of the drop rates: each layer's configured rate times ``factor(epoch)``."""
    kind: str
    max_epochs: int
    gamma: float | None = None
    until: float | None = None

    def factor(self, epoch: int) -> float:
        return schedule_factor(self.kind, epoch, self.max_epochs, self.gamma, self.until)
