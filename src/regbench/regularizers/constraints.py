"""Max-norm constraint (Srivastava et al. 2014, section 5.1): after every optimizer step, each
unit's incoming weight vector w is projected back onto the ball ||w||_2 <= c."""

from __future__ import annotations

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
