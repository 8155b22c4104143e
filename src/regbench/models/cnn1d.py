"""The MNIST-1D convolutional baseline (Greydanus & Kobak, "Scaling down deep learning with
MNIST-1D"; `ConvBase` in github.com/greydanus/mnist1d, notebooks/models.py):

    Conv1d(1, 25, k=5, stride=2, pad=1) -> ReLU -> Conv1d(25, 25, k=3, stride=2, pad=1) -> ReLU
    -> Conv1d(25, 25, k=3, stride=2, pad=1) -> ReLU -> flatten -> Linear(25 * 5, 10)

For length-40 inputs the lengths are 40 -> 19 -> 10 -> 5, so the head sees 125 features and the
model has 150 + 1,900 + 1,900 + 1,260 = 5,210 parameters (the reference hard-codes
linear_in=125; here it is computed from the input length). Inputs are [N, L] (or [N, 1, L]);
the channel dim is added inside `forward`, as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from regbench.models.inputs import InputProblem
from regbench.models.slots import Slots

# (kernel, stride, padding) of the three conv layers
LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def conv_out_length(length: int) -> int:
    for k, s, p in LAYERS:
        length = (length + 2 * p - k) // s + 1
    return length


class CNN1D(nn.Module):
    """[conv -> activation -> conv slot -> hidden slot] x 3 -> flatten -> linear head.

    Slots: `input` on the raw [N, 1, L] signal; `conv` after each conv block's activation
    (given channels and 1 spatial dim: spatial dropout / DropBlock1d); `hidden` after each conv
    block too (element-wise dropout); `activation` for the three conv activations. No hidden
    fully-connected layer, hence no `linear` slot; no residual blocks.
    """

    SLOTS = frozenset({"input", "hidden", "conv", "activation"})

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 25,
                 slots: Slots | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"model.channels must be a positive integer, got {channels!r}")
        problem = self.input_problem(input_shape)
        if problem is not None:
            raise ValueError(f"CNN1D needs {problem.needs}, got {tuple(input_shape)}")
        slots = slots or Slots()
        self.input_drop = slots.input()
        blocks: list[nn.Module] = []
        c_in = 1
        for k, s, p in LAYERS:
            blocks += [nn.Conv1d(c_in, channels, k, stride=s, padding=p), slots.activation(),
                       slots.conv(channels, 1), slots.hidden("conv")]
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels * conv_out_length(input_shape[-1]), num_classes)

    @classmethod
    def input_problem(cls, input_shape: tuple[int, ...], **_kwargs) -> InputProblem | None:
        shape = tuple(input_shape)
        if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1):
            if conv_out_length(shape[-1]) >= 1:
                return None
            return InputProblem("1-D inputs of length >= 3", "use a longer signal")
        return InputProblem("1-D signals of shape (L,) or (1, L)", "use a 1-D dataset such as data=mnist1d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, x.shape[-1])
        h = self.features(self.input_drop(x))
        return self.head(h.flatten(1))
