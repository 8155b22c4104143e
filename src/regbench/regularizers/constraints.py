"""Max-norm constraint (Srivastava et al. 2014, section 5.1): after every optimizer step, each
unit's incoming weight vector w is projected back onto the ball ||w||_2 <= c."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn


def max_norm_(net: nn.Module, c: float) -> None:
    """Rescale, in place, every row (one unit's incoming weights) of every weight matrix with norm > c."""
    with torch.no_grad():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() >= 2:
                # torch.renorm: each slice along dim 0 with p-norm > maxnorm is rescaled to maxnorm
                w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=c))


class MaxNorm(pl.Callback):
    """Applies `max_norm_` after each optimizer step (an optimizer step post-hook), so it acts on
    every mini-batch step even though Lightning sees one batch per epoch."""

    def __init__(self, c: float):
        self.c = c
        self._handle = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        max_norm_(net, self.c)
        for opt in trainer.optimizers:
            self._handle = opt.register_step_post_hook(lambda *_: max_norm_(net, self.c))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()

    def __repr__(self) -> str:
        return f"MaxNorm(c={self.c})"
