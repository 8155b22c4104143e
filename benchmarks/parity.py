"""A plain PyTorch training loop for the default run (`regularizer=none` on MNIST-1D): the baseline
that regbench's framework overhead is measured against, and the reference of the parity test.

It builds the same network from the same seed, draws the same batch order and takes the same Adam
steps as `python run.py regularizer=none`, without Lightning, Hydra or callbacks.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


def raw_mlp(in_features: int, hidden: int, depth: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def raw_train(x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int, batch_size: int, lr: float,
              hidden: int = 100, depth: int = 2, num_classes: int = 10) -> tuple[list[float], float, nn.Module]:
    """Train like the default run; return (per-epoch mean training loss, seconds, net)."""
    torch.manual_seed(seed)  # what seed_everything does for torch: the same initial weights
    net = raw_mlp(x[0].numel(), hidden, depth, num_classes)
    opt = torch.optim.Adam([{"params": [p for p in net.parameters() if p.dim() > 1], "weight_decay": 0.0},
                            {"params": [p for p in net.parameters() if p.dim() <= 1], "weight_decay": 0.0}], lr=lr)
    losses = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        total = torch.zeros(())
        for idx in order.split(batch_size):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        losses.append(float(total / len(y)))
    return losses, time.perf_counter() - t0, net


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    """A separate run's optimizer, written plainly (net -> optimizer), the reference the engine's own
    optimizers are tested against: weight decay is a coupled L2 penalty on weights only, not biases."""
    def build(net):
        decay = [p for p in net.parameters() if p.dim() > 1]
        no_decay = [p for p in net.parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if name == "adam":
            return torch.optim.Adam(groups, lr=lr)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)

    return build
