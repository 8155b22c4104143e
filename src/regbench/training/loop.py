"""What the training path and its tests share: the objective's signature, plain cross-entropy, each
epoch's batch order, and the evaluation of one plain network (the engine, engine/fit.py, trains
populations; a network saved to best.ckpt is evaluated with `evaluate`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

# (net, x, y) -> (loss to minimise, logits for accuracy)
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cross_entropy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = net(x)
    return F.cross_entropy(logits, y), logits


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The batch order of `epoch`: a permutation of range(n) that depends on (seed, epoch) alone.

    Stateless on purpose: a run resumed from a checkpoint at epoch k draws exactly the orders an
    uninterrupted run draws, and the order never depends on how many numbers dropout consumed.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000,
             mc_samples: int = 0) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `net` on (x, y), in eval mode.

    With `mc_samples` > 0 (MC dropout, Gal & Ghahramani 2016) the dropout layers stay on and the
    prediction is the mean softmax of that many passes; the mean predictive entropy is reported too.
    """
    was_training = net.training
    net.eval()
    if mc_samples:
        from regbench.regularizers.layers import set_mc_dropout
        if set_mc_dropout(net, True) == 0:
            raise ValueError("mc_samples > 0 but the network has no regbench dropout layer to keep on at test time")
    loss = correct = entropy = 0.0
    try:
        for xb, yb in zip(x.split(chunk), y.split(chunk)):
            if mc_samples:
                probs = torch.stack([F.softmax(net(xb), 1) for _ in range(mc_samples)]).mean(0)
                logp = probs.clamp_min(1e-12).log()
                entropy += float(-(probs * logp).sum(1).sum())
            else:
                logp = F.log_softmax(net(xb), 1)
            loss += float(F.nll_loss(logp, yb, reduction="sum"))
            correct += float((logp.argmax(1) == yb).sum())
    finally:
        if mc_samples:
            set_mc_dropout(net, False)
        net.train(was_training)
    out = {"loss": loss / len(y), "acc": correct / len(y)}
    if mc_samples:
        out["entropy"] = entropy / len(y)
    return out
