"""Regularizers: an arm is a composition of components (dropout in a model slot, an early-stopping
criterion, weight decay, a max-norm constraint, an R-Drop objective, MC-dropout testing), each
given by its own node of `conf/regularizer/*.yaml`. `build_regularization` turns those nodes into
what the rest of the system plugs in: model slots, the training objective and
the optimizer's weight decay, a max-norm bound, a dropout schedule and a stopping criterion, which the
training engine (engine/fit.py) applies per replica. Combinations need no class of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from torch import nn

from regbench.models.slots import Slots
from regbench.training.loop import Objective, cross_entropy

if TYPE_CHECKING:
    from regbench.config import DropoutConfig, EarlyStopConfig
    from regbench.regularizers.early_stopping import Stopping
    from regbench.regularizers.schedules import DropoutSchedule


@dataclass
class Regularization:
    name: str
    slots: Slots
    objective: Objective = cross_entropy
    weight_decay: float = 0.0
    monitor: str = "val/acc"        # what "best epoch" means for this arm
    mode: str = "max"
    restore_best: bool = False
    mc_samples: int = 0
    max_norm: float | None = None                   # each unit's incoming weights projected to norm <= c, every step
    schedule: "DropoutSchedule | None" = None       # the drop rates' factor per epoch
    stopping: "Stopping | None" = None              # the early-stopping criterion and what it reads


def _dropout_slots(d: "DropoutConfig") -> Slots:
    """Fill the model slots that dropout kind `d.kind` acts on (one registry: kind -> slots)."""
    from regbench.regularizers import layers as L

    slots = Slots()
    hidden: dict[str, Callable[[float], nn.Module]] = {
        "bernoulli": L.Dropout, "gaussian": L.GaussianDropout, "alpha": L.AlphaDropout,
    }
    if d.kind in hidden:
        make = hidden[d.kind]
        conv_p = d.p if d.conv_p is None else d.conv_p
        slots.hidden, slots.used = (lambda where="fc": make(conv_p if where == "conv" else d.p)), {"hidden"}
        if d.kind == "alpha":  # alpha dropout keeps SELU's fixed point: the network must use SELU
            slots.activation = nn.SELU
            slots.used.add("activation")
        if d.input_p > 0:
            slots.input = lambda: make(d.input_p)
            slots.used.add("input")
        return slots
    if d.kind == "dropconnect":
        slots.linear, slots.used = partial(L.DropConnectLinear, p=d.p), {"linear"}
    elif d.kind == "spatial":
        slots.conv, slots.used = (lambda channels, dims: L.SpatialDropout(d.p)), {"conv"}
    elif d.kind == "dropblock":
        slots.conv, slots.used = (lambda channels, dims: L.DropBlock(d.p, d.block_size)), {"conv"}
    elif d.kind == "drop_path":
        slots.residual, slots.used = (lambda: L.DropPath(d.p)), {"residual"}
    if d.input_p > 0:
        slots.input = lambda: L.Dropout(d.input_p)
        slots.used.add("input")
    return slots


def _criterion(e: "EarlyStopConfig"):
    from regbench.regularizers import criteria as C

    return {
        "patience": lambda: C.Patience(e.patience, e.min_delta),
        "gl": lambda: C.GL(e.alpha),
        "pq": lambda: C.PQ(e.alpha, e.strip),
        "up": lambda: C.UP(e.strips, e.strip),
    }[e.criterion]()


def build_regularization(name: str, *, dropout: "DropoutConfig | None", early_stop: "EarlyStopConfig | None",
                         weight_decay: float, maxnorm: float | None, rdrop_alpha: float | None,
                         mc_samples: int, max_epochs: int) -> Regularization:
    reg = Regularization(name=name, slots=_dropout_slots(dropout) if dropout else Slots(),
                         weight_decay=weight_decay, mc_samples=mc_samples)
    if dropout and dropout.schedule != "constant":
        from regbench.regularizers.schedules import DropoutSchedule
        reg.schedule = DropoutSchedule(dropout.schedule, max_epochs=max_epochs, gamma=dropout.schedule_gamma,
                                       until=dropout.schedule_until)
    if early_stop:
        from regbench.regularizers.early_stopping import Stopping
        reg.monitor = early_stop.monitor
        reg.mode = "min" if early_stop.monitor.endswith("loss") else "max"
        reg.restore_best = early_stop.restore_best
        reg.stopping = Stopping(_criterion(early_stop), monitor=reg.monitor, mode=reg.mode)
    reg.max_norm = maxnorm
    if rdrop_alpha is not None:
        from regbench.regularizers.objectives import rdrop
        reg.objective = partial(rdrop, alpha=rdrop_alpha)
    return reg
