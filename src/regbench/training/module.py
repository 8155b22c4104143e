"""The LightningModule: wires the network, the objective, the optimizer and the metrics.

One training "batch" is a whole epoch (see `loop.train_epoch`): Lightning runs validation,
callbacks (early stopping, best-weight tracking, regularizer schedules), logging and checkpoints
around it, while the mini-batch steps run as a plain PyTorch loop.
"""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from regbench.training.loop import Objective, epoch_order, evaluate, train_epoch


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, objective: Objective,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 batch_size: int, eval_batch_size: int, seed: int):
        super().__init__()
        self.net = net
        self.objective = objective
        self.make_optimizer = make_optimizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.steps = 0
        # the optimizer steps inside train_epoch; Lightning's automatic loop would add ~1 ms per step
        self.automatic_optimization = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net)

    def training_step(self, batch, batch_idx):
        x, y = batch
        order = epoch_order(len(y), self.seed, self.current_epoch, y.device)
        optimizer = self.optimizers().optimizer  # the torch optimizer itself, without Lightning's wrapper
        loss, acc, steps = train_epoch(self.net, optimizer, self.objective, x, y, order, self.batch_size)
        self.steps += steps
        # floats and an explicit batch_size: Lightning then neither moves tensors nor inspects the batch
        self.log_dict({"train/loss": float(loss), "train/acc": float(acc)}, on_step=True, on_epoch=False,
                      batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        m = evaluate(self.net, x, y, self.eval_batch_size)
        self.log_dict({"val/loss": m["loss"], "val/acc": m["acc"]}, on_step=False, on_epoch=True, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the global RNG draws the dropout masks: a resumed run must continue the same stream
        checkpoint["regbench"] = {"steps": self.steps, "rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["regbench"]
        self.steps = state["steps"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
