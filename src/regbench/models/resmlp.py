"""The MNIST-1D reference MLP with its residual hidden layer (`MLPBase` in greydanus/mnist1d):

    h = act(W1 x);   h = h + act(W2 h)   (x depth-1);   logits = W3 h

The residual branches give stochastic depth (DropPath, Huang et al. 2016) a place to act: the
`residual` slot wraps each branch, so a dropped branch leaves the identity path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regbench.models.mlp import MLP
from regbench.models.slots import Slots


class ResidualBlock(nn.Module):
    rows_independent = True  # as MLP's: forward mixes no rows

    def __init__(self, width: int, slots: Slots):
        super().__init__()
        self.branch = nn.Sequential(slots.linear(width, width), slots.activation(), slots.hidden())
        self.drop_path = slots.residual()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop_path(self.branch(h))


class ResMLP(nn.Module):
    rows_independent = True  # as MLP's: forward mixes no rows

    SLOTS = MLP.SLOTS | {"residual"}
    input_problem = MLP.input_problem

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int, depth: int,
                 slots: Slots | None = None):
        super().__init__()
        for key, value in (("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2 - (key == "hidden"):
                raise ValueError(f"model.{key} must be an integer >= {2 - (key == 'hidden')}, got {value!r}")
        slots = slots or Slots()
        self.input_drop = slots.input()
        self.stem = nn.Sequential(slots.linear(math.prod(input_shape), hidden), slots.activation(), slots.hidden())
        self.blocks = nn.Sequential(*(ResidualBlock(hidden, slots) for _ in range(depth - 1)))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(self.input_drop(x.flatten(1)))))
