"""The classifier of the seed document (section 4.2):

    Conv2d(1, 32, 3) -> ReLU -> Conv2d(32, 64, 3) -> ReLU -> Conv2d(64, 128, 3) -> ReLU
    -> flatten -> Linear(128 * 8 * 8, 256) -> ReLU -> Linear(256, 10)

No padding, stride 1, no pooling: 14 -> 12 -> 10 -> 8, so fc1's 128*8*8 inputs imply 14x14
single-channel images (`data.resize=[14,14]` for the 28x28 datasets). Parameters:
320 + 18,496 + 73,856 + 2,097,408 + 2,570 = 2,192,650. The document leaves `forward`
unwritten; ReLU after every conv and after fc1 is the reading used here.
"""

from __future__ import annotations

import torch
from torch import nn

from regbench.models.inputs import InputProblem
from regbench.models.slots import Slots

INPUT_SHAPE = (1, 14, 14)
CHANNELS = (32, 64, 128)
FC_HIDDEN = 256


class SeedCNN(nn.Module):
    """[conv -> activation -> conv slot -> hidden slot] x 3 -> flatten -> fc1 (linear slot)
    -> activation -> hidden slot -> fc2.

    Slots: `input` on the raw image; `conv` after each conv block's activation (given channels
    and 2 spatial dims: Dropout2d / DropBlock); `hidden` after each conv block (element-wise)
    and after fc1's activation; `linear` is fc1's class (DropConnect), the head stays nn.Linear;
    `activation` for the three conv activations and fc1's. No residual blocks.
    """

    SLOTS = frozenset({"input", "hidden", "conv", "linear", "activation"})

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, slots: Slots | None = None):
        super().__init__()
        problem = self.input_problem(input_shape)
        if problem is not None:
            raise ValueError(f"SeedCNN needs {problem.needs}, got {tuple(input_shape)}")
        slots = slots or Slots()
        self.input_drop = slots.input()
        blocks: list[nn.Module] = []
        c_in = INPUT_SHAPE[0]
        for c_out in CHANNELS:
            blocks += [nn.Conv2d(c_in, c_out, kernel_size=3), slots.activation(), slots.conv(c_out, 2), slots.hidden("conv")]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        side = INPUT_SHAPE[1] - 2 * len(CHANNELS)  # 8
        self.fc1 = slots.linear(c_in * side * side, FC_HIDDEN)
        self.fc1_act = slots.activation()
        self.fc1_drop = slots.hidden()
        self.fc2 = nn.Linear(FC_HIDDEN, num_classes)

    @classmethod
    def input_problem(cls, input_shape: tuple[int, ...], **_kwargs) -> InputProblem | None:
        shape = tuple(input_shape)
        if shape == INPUT_SHAPE:
            return None
        needs = f"inputs of shape {INPUT_SHAPE}"
        if len(shape) == 3 and shape[0] == 1:
            return InputProblem(needs, "set data.resize=[14,14]")
        if len(shape) == 3:
            return InputProblem(needs, f"it takes single-channel images and this data has {shape[0]} channels "
                                       f"(use model=mlp or model=logreg)")
        return InputProblem(needs, "use an image dataset (e.g. data=mnist5k with data.resize=[14,14])")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.input_drop(x)).flatten(1)
        return self.fc2(self.fc1_drop(self.fc1_act(self.fc1(h))))
