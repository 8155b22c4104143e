"""Training-time behaviour that is not a regularizer: best-epoch tracking, history, divergence, progress."""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

log = logging.getLogger("regbench")


def _metric(trainer: pl.Trainer, key: str) -> float:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else math.nan


class BestWeights(pl.Callback):
    """Track the best validation epoch; with `restore=True`, load its weights when fit ends.

    Kept in memory (tiny models), no checkpoint files. Every arm tracks `best_epoch`; only
    early-stopping arms restore, so the others are tested on their final weights.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min", restore: bool = False):
        self.monitor, self.mode, self.restore = monitor, mode, restore
        self.best_value = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.restored = False

    def _better(self, v: float) -> bool:
        return v < self.best_value if self.mode == "min" else v > self.best_value

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        v = _metric(trainer, self.monitor)
        if math.isfinite(v) and self._better(v):
            self.best_value, self.best_epoch = v, trainer.current_epoch
            if self.restore:
                self.best_state = copy.deepcopy(pl_module.net.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore and self.best_state is not None:
            pl_module.net.load_state_dict(self.best_state)
            self.restored = True

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_epoch, self.best_state = state["best_value"], state["best_epoch"], state["best_state"]


class History(pl.Callback):
    """Per-epoch train and validation metrics, kept for the results record (the report's curves).

    Recorded at the end of each epoch, before a checkpoint of that epoch is written (the
    checkpoint callback comes last), so a resumed run's history has every epoch once.
    """

    KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")

    def __init__(self):
        self.rows: dict[str, list] = {"epoch": [], **{k: [] for k in self.KEYS}}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows["epoch"].append(trainer.current_epoch)
        for k in self.KEYS:
            self.rows[k].append(_metric(trainer, k))

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = state["rows"]


class DivergenceGuard(pl.Callback):
    """Stop the run when the epoch's training loss is NaN or infinite, and remember the epoch."""

    def __init__(self):
        self.diverged_epoch: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not bool(torch.isfinite(loss)):
            self.diverged_epoch = trainer.current_epoch
            trainer.should_stop = True
            log.warning("training loss is %s at epoch %d: stopping this run as diverged",
                        float(loss), trainer.current_epoch)


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
    epochs, atomically, to `path`. It must come after the callbacks whose state it saves.

    Lightning's ModelCheckpoint keys its saving on `global_step`, which counts optimizer steps that
    Lightning itself took; here the steps run inside the epoch loop, so it would never save.
    """

    def __init__(self, path: Path, every: int):
        self.path, self.every = Path(path), every

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for logger in trainer.loggers:  # flush: the curves up to the checkpoint must outlive a kill, as it does
            logger.save()
        tmp = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # a full, resumable checkpoint (saying so silences Lightning's note)
        os.replace(tmp, self.path)  # a kill mid-save leaves the previous checkpoint intact
