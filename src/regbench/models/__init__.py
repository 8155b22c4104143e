"""Classifiers: plain `nn.Module`s (no Lightning), one registry entry per `conf/model/*.yaml`."""

from __future__ import annotations

from torch import nn

from regbench.models.mlp import MLP
from regbench.models.slots import SlotError, Slots, check_slots

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
}

__all__ = ["MODELS", "Slots", "SlotError", "check_slots", "build_model"]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, slots: Slots,
                regularizer: str = "none", **kwargs) -> nn.Module:
    """Build model `name`, refusing regularizer slots it does not have."""
    cls = MODELS[name]
    check_slots(name, cls.SLOTS, slots, regularizer)
    return cls(input_shape=input_shape, num_classes=num_classes, slots=slots, **kwargs)
