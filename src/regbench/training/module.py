"""The LightningModule: wires the network, the objective, the optimizer and the metrics.

One training "batch" is a whole epoch: the mini-batch steps run as a plain PyTorch loop
(`loop.train_epoch`), then the validation split is evaluated, and the epoch's train and
validation metrics are logged together. Lightning runs the epochs, the callbacks (early
stopping, best-weight tracking, regularizer schedules, checkpoints; all at `on_train_epoch_end`),
logging and device placement around it. Lightning's own validation loop is not used: it costs
~2.5 ms per epoch, 10% of an MNIST-1D epoch (benchmarks/bench.py).
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
        x, y, x_val, y_val = batch
        order = epoch_order(len(y), self.seed, self.current_epoch, y.device)
        optimizer = self.optimizers().optimizer  # the torch optimizer itself, without Lightning's wrapper
        loss, acc, steps = train_epoch(self.net, optimizer, self.objective, x, y, order, self.batch_size)
        self.steps += steps
        val = evaluate(self.net, x_val, y_val, self.eval_batch_size)
        self.publish({"train/loss": float(loss), "train/acc": float(acc), "val/loss": val["loss"], "val/acc": val["acc"]})
        return loss

    def publish(self, metrics: dict[str, float]) -> None:
        """Make the epoch's metrics visible to the callbacks (`trainer.callback_metrics`) and the logger.

        Not `self.log`: its result collection (built for on_step / on_epoch reductions across
        batches, which one value per epoch does not need) costs ~1.5 ms an epoch here, 6% of an
        MNIST-1D epoch. The logger's x-axis is the epoch.
        """
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.current_epoch)

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
