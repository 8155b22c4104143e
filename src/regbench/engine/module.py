"""The LightningModule that drives a population's training (engine/fit.py's ``Training``).

One Lightning "batch" is a whole epoch of every replica: its mini-batch steps run as one plain
PyTorch loop over in-memory tensors (no DataLoader, no per-step logging, no host sync), so
Lightning adds nothing per step; it runs the epochs, the progress bar, resumable checkpoints,
precision and device placement around them. Each replica logs its own curves (its own logger);
``trainer.callback_metrics`` holds the epoch's means over the replicas, for the progress bar.
"""

from __future__ import annotations

from typing import Iterator

import pytorch_lightning as pl
import torch

from regbench.engine.fit import Training


class EpochData:
    """Lightning's training data: one item per epoch (the engine holds the tensors)."""

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield torch.zeros(1)


class PopulationModule(pl.LightningModule):
    def __init__(self, training: Training):
        super().__init__()
        self.run = training
        # the engine's optimizer steps inside the epoch; Lightning's automatic loop would add ~1 ms a step
        self.automatic_optimization = False

    def configure_optimizers(self):
        return None

    def training_step(self, batch, batch_idx):
        means = self.run.run_epoch(self.current_epoch)
        # not self.log: its result collection costs ~1.5 ms an epoch for one value per epoch
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in means.items()})
        if self.run.done:
            self.trainer.should_stop = True
        return None

    @property
    def steps(self) -> int:
        return max((t.steps for t in self.run.trackers), default=0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the global RNG draws the dropout masks: a resumed run must continue the same stream
        checkpoint["regbench"] = {"training": self.run.state_dict(), "rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["regbench"]
        self.run.load_state_dict(state["training"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
