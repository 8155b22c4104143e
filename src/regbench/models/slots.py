"""Slots: the places in a classifier where a regularizer plugs in.

A model is built once per arm with a `Slots`; with the default `Slots()` it is the plain,
unregularized network, so the classifier is the same class in every arm. Each model lists
the slots it has in `SLOTS`; a regularizer that needs a slot the model lacks (spatial
dropout on an MLP, say) is refused at start-up by `check_slots`, never silently ignored.

    input       module applied to the raw input                  (e.g. input dropout)
    hidden      module after each hidden activation (dropout); called as hidden() after a
                fully-connected layer and hidden("conv") after a conv block, so that conv
                feature maps can get their own (smaller) rate
    conv        module after each conv block's activation, given the channel count
                and the number of spatial dims (spatial dropout, DropBlock)
    linear      the class used for hidden fully-connected layers (DropConnect swaps it)
    activation  the hidden activation (SELU for alpha dropout)
    residual    module wrapping each residual branch (DropPath); only models with residual blocks
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


def _identity(*_args, **_kwargs) -> nn.Module:
    return nn.Identity()


@dataclass
class Slots:
    input: Callable[[], nn.Module] = _identity
    hidden: Callable[..., nn.Module] = _identity
    conv: Callable[[int, int], nn.Module] = _identity
    linear: Callable[[int, int], nn.Module] = nn.Linear
    activation: Callable[[], nn.Module] = nn.ReLU
    residual: Callable[[], nn.Module] = _identity
    # names of the slots that were filled by the regularizer, for `check_slots`
    used: set[str] = field(default_factory=set)


class SlotError(ValueError):
    """A regularizer asked for a slot that the model does not have."""


def check_slots(model_name: str, model_slots: frozenset[str], slots: Slots, regularizer: str) -> None:
    missing = sorted(slots.used - model_slots)
    if missing:
        raise SlotError(
            f"regularizer={regularizer} needs the slot(s) {missing} which model={model_name} does not have "
            f"(it has {sorted(model_slots)}); choose a model with them or another regularizer"
        )
