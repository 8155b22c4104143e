"""Training objectives other than plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rdrop(net: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Drop (Liang et al. 2021): two forward passes with independent dropout masks,

        L = 1/2 [CE(p1, y) + CE(p2, y)] + alpha * 1/2 [KL(p1 || p2) + KL(p2 || p1)],

    so that the two sub-models the masks pick agree. The logits of the first pass give the accuracy.
    """
    logits = net(torch.cat([x, x]))  # one batched call: both passes draw independent masks
    l1, l2 = logits.chunk(2)
    ce = 0.5 * (F.cross_entropy(l1, y) + F.cross_entropy(l2, y))
    lp1, lp2 = F.log_softmax(l1, 1), F.log_softmax(l2, 1)
    kl = 0.5 * (F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")
                + F.kl_div(lp2, lp1, log_target=True, reduction="batchmean"))
    return ce + alpha * kl, l1
