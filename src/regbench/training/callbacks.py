"""Lightning callbacks of the training path: progress (a line every N epochs, or an epoch bar) and
resumable checkpoints. Best epoch, stopping, divergence and history are per replica, in engine/fit.py."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from regbench.rundir import OWNER_KEY

log = logging.getLogger("regbench")


def _metric(trainer: pl.Trainer, key: str) -> float:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else math.nan


class EpochProgress(pl.Callback):
    """One log line every `every` epochs (Lightning's bar would count one batch per epoch here)."""

    def __init__(self, every: int, label: str):
        self.every, self.label = every, label

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        e = trainer.current_epoch + 1
        if self.every and (e % self.every == 0 or e == trainer.max_epochs or trainer.should_stop):
            log.info("%s epoch %d/%d train/loss %.4f train/acc %.3f val/loss %.4f val/acc %.3f",
                     self.label, e, trainer.max_epochs, _metric(trainer, "train/loss"),
                     _metric(trainer, "train/acc"), _metric(trainer, "val/loss"), _metric(trainer, "val/acc"))


class EpochBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting epochs: one Lightning batch is a whole epoch here, so the stock
    bar would restart at 1/1 every epoch. Shows epochs done of max_epochs, epochs/s, elapsed and
    ETA (tqdm's), and the last epoch's train/loss and val/acc."""

    def __init__(self, label: str):
        super().__init__(leave=True)
        self.label = label

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        self.train_progress_bar = Tqdm(desc=self.label, total=trainer.max_epochs, initial=trainer.current_epoch,
                                       unit="epoch", dynamic_ncols=True, leave=True, smoothing=0.1,
                                       file=sys.stderr)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_) -> None:
        pass  # the stock bar resets to the epoch's batches here

    def on_train_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        bar.set_postfix({"train/loss": f"{_metric(trainer, 'train/loss'):.4f}",
                         "val/acc": f"{_metric(trainer, 'val/acc'):.3f}"}, refresh=False)
        bar.update(1)


def want_bar(setting: object) -> bool:
    """trainer.progress_bar: true / false, or auto = stderr is a terminal and this is not a worker
    process of a launcher (joblib's workers inherit the terminal but would draw over each other)."""
    if setting != "auto":
        return bool(setting)
    import multiprocessing

    return sys.stderr.isatty() and multiprocessing.parent_process() is None


class PeriodicCheckpoint(pl.Callback):
    """Save a resumable checkpoint (weights, optimizer, loops, callback states, RNG) every `every`
    epochs, atomically, to `path`, stamped with `owner` (the run id and config hash it belongs to).
    It must come after the callbacks whose state it saves.

    Lightning's ModelCheckpoint keys its saving on `global_step`, which counts optimizer steps that
    Lightning itself took; here the steps run inside the epoch loop, so it would never save.
    """

    def __init__(self, path: Path, every: int, owner: dict[str, str] | None = None, loggers: list | None = None):
        self.path, self.every, self.owner = Path(path), every, dict(owner or {})
        self.loggers = [lg for lg in (loggers or []) if lg is not None]  # the run's own loggers (not Lightning's)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # whose checkpoint it is (run id, config hash): a copy in another run's folder is refused there
        checkpoint[OWNER_KEY] = dict(self.owner)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for logger in [*trainer.loggers, *self.loggers]:  # flush: the curves up to the checkpoint must outlive a kill
            logger.save()
        tmp = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # a full, resumable checkpoint (saying so silences Lightning's note)
        os.replace(tmp, self.path)  # a kill mid-save leaves the previous checkpoint intact
