"""An arm's early stopping: which criterion of ``criteria`` decides, on which validation metric.

The engine (``engine/fit.py``) gives every replica its own copy of the criterion and updates it
once per epoch, after the epoch's validation, with that epoch's validation value (an error: an
accuracy-like metric enters as ``1 - value``) and training loss; the replica leaves the population
when it fires. ``stopped_epoch`` and ``reason`` go into the replica's record.
"""

from __future__ import annotations

from dataclasses import dataclass

from regbench.regularizers.criteria import Criterion

__all__ = ["Stopping", "one_minus"]


def one_minus(v: float) -> float:
    """An accuracy from the error the criteria minimise (a module-level function: picklable)."""
    return 1.0 - v


@dataclass
class Stopping:
    """Args:
        criterion: a :class:`~regbench.regularizers.criteria.Criterion` (Patience, GL, PQ, UP).
        monitor: the validation metric it reads (``val/loss`` or ``val/acc``).
        mode: ``"min"`` if ``monitor`` is to be minimised (a loss, an error rate); ``"max"`` for an
            accuracy-like score in [0, 1], which the criterion sees as the error ``1 - value`` (the
            criteria minimise, and GL/PQ are ratios of errors); its reasons still name the accuracy.
    """

    criterion: Criterion
    monitor: str = "val/loss"
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode={self.mode!r} is invalid: must be 'min' or 'max'")
        if not isinstance(self.criterion, Criterion):
            raise TypeError(f"criterion must be a regbench Criterion, got {type(self.criterion).__name__}")
        self.criterion.describe_as(self.monitor, one_minus if self.mode == "max" else None)

    def error(self, value: float) -> float:
        """What the criterion is fed for a value of ``monitor``."""
        return 1.0 - value if self.mode == "max" else value
