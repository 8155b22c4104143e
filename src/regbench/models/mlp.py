"""The MNIST-1D multilayer perceptron (Greydanus & Kobak 2020): 40 -> 100 -> 100 -> 10, ReLU.

(The reference repo's `MLPBase` adds a skip connection around its second layer; this MLP is
the plain feed-forward stack the paper describes.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regbench.models.inputs import InputProblem
from regbench.models.slots import Slots


class MLP(nn.Module):
    """Fully-connected classifier: [linear -> activation -> hidden slot] x depth -> linear.

    The input is flattened, so any input shape works.
    """

    # forward mixes no rows (no batch statistics): a population may fold its replicas into the
    # batch (engine/population.py, rows mode)
    rows_independent = True

    SLOTS = frozenset({"input", "hidden", "linear", "activation"})

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int, depth: int,
                 slots: Slots | None = None):
        super().__init__()
        for key, value in (("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {value!r} "
                                 f"(for no hidden layer use model=logreg)")
        slots = slots or Slots()
        self.input_drop = slots.input()
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for _ in range(depth):
            layers += [slots.linear(width, hidden), slots.activation(), slots.hidden()]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    @classmethod
    def input_problem(cls, input_shape: tuple[int, ...], **_kwargs) -> InputProblem | None:
        return None if len(input_shape) >= 1 and math.prod(input_shape) > 0 else InputProblem("non-empty inputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.input_drop(x.flatten(1))))
