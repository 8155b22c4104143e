"""Multinomial logistic regression: flatten -> Linear. The floor every arm should beat."""

from __future__ import annotations

import math

import torch
from torch import nn

from regbench.models.inputs import InputProblem
from regbench.models.slots import Slots


class LogReg(nn.Module):
    """A linear classifier on the flattened input; any input shape works.

    Only the `input` slot exists (input dropout): there is no hidden layer.
    """

    rows_independent = True  # as MLP's: forward mixes no rows

    SLOTS = frozenset({"input"})

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, slots: Slots | None = None):
        super().__init__()
        slots = slots or Slots()
        self.input_drop = slots.input()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    @classmethod
    def input_problem(cls, input_shape: tuple[int, ...], **_kwargs) -> InputProblem | None:
        return None if len(input_shape) >= 1 and math.prod(input_shape) > 0 else InputProblem("non-empty inputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.input_drop(x.flatten(1)))
