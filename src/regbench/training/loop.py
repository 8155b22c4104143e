"""The inner training loop: one epoch of plain PyTorch mini-batch steps, and evaluation.

Tiny models are bound by per-step overhead, not arithmetic, so the epoch is one tight loop over
in-memory tensors batched with a `randperm` (no DataLoader, no per-step logging, no host sync):
Lightning sees one "batch" per epoch and runs its callbacks, validation and logging around it.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
import torch.nn.functional as F

# (net, x, y) -> (loss to minimise, logits for accuracy)
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cross_entropy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = net(x)
    return F.cross_entropy(logits, y), logits


class EpochPlans:
    """An iterable of one item per epoch: (x, y, order), `order` a fresh permutation of the rows.

    The permutations come from their own generator seeded by the run seed, so the batch order
    depends on the seed alone (not on how many random numbers dropout drew).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        self.x, self.y = x, y
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        yield self.x, self.y, torch.randperm(len(self.y), generator=self.generator).to(self.x.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class FullBatch:
    """An iterable holding one batch, (x, y): the whole validation set, evaluated in chunks."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.x, self.y


def train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
                x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over `order` in mini-batches; returns (mean loss, accuracy, steps) as device tensors.

    Loss and accuracy are running values in training mode (dropout on), like Lightning's
    on-epoch train metrics; they stay on the device until the epoch ends.
    """
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    steps = 0
    for idx in order.split(batch_size):
        xb, yb = x[idx], y[idx]
        loss, logits = objective(net, xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        steps += 1
    n = len(order)
    return loss_sum / n, correct.float() / n, steps


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
        set_mc_dropout(net, True)
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
