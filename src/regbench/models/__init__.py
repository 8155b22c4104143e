"""Classifiers: plain `nn.Module`s (no Lightning), one registry entry per `conf/model/*.yaml`.

Every model class has `SLOTS` (the regularizer slots it offers, see `slots.py`) and a
classmethod `input_problem(input_shape, **kwargs)` (None when it accepts that input shape).
"""

from __future__ import annotations

from torch import nn

from regbench.models.cnn1d import CNN1D
from regbench.models.inputs import IncompatibleInputError, InputProblem, incompatible_message
from regbench.models.logreg import LogReg
from regbench.models.mlp import MLP
from regbench.models.resmlp import ResMLP
from regbench.models.seed_cnn import SeedCNN
from regbench.models.slots import SlotError, Slots, check_slots

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "logreg": LogReg,
    "cnn1d": CNN1D,
    "seed_cnn": SeedCNN,
    "resmlp": ResMLP,
}

__all__ = ["MODELS", "Slots", "SlotError", "check_slots", "build_model", "check_input", "IncompatibleInputError",
           "InputProblem", "MLP", "LogReg", "CNN1D", "SeedCNN", "ResMLP"]


def check_input(name: str, input_shape: tuple[int, ...], data_name: str = "?", **kwargs) -> None:
    """Raise `IncompatibleInputError` naming model and data if model `name` cannot take `input_shape`."""
    problem = MODELS[name].input_problem(tuple(input_shape), **kwargs)
    if problem is not None:
        raise IncompatibleInputError(incompatible_message(name, data_name, tuple(input_shape), problem))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, slots: Slots,
                regularizer: str = "none", *, data_name: str = "?", **kwargs) -> nn.Module:
    """Build model `name`, refusing regularizer slots it does not have and inputs it cannot take."""
    if name not in MODELS:
        raise KeyError(f"unknown model={name!r}; known models: {sorted(MODELS)}")
    cls = MODELS[name]
    input_shape = tuple(int(d) for d in input_shape)
    check_slots(name, cls.SLOTS, slots, regularizer)
    check_input(name, input_shape, data_name, **kwargs)
    return cls(input_shape=input_shape, num_classes=num_classes, slots=slots, **kwargs)
