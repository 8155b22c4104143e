"""Training: best-weight restoring, determinism, divergence, the record's contents."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import compose, tiny
from regbench.app import _hparams, train
from regbench.config import validate
from regbench.training.callbacks import BestWeights, History
from regbench.training.module import Classifier


def train_in_process(tmp_path, *overrides: str) -> dict:
    """`app.train` on the real composed config, in this process (no CLI start-up)."""
    cfg = compose(list(overrides))
    rc = validate(cfg)
    return train(rc, tmp_path, data_keys=[k for k in cfg.data if k != "name"],
                 model_keys=[k for k in cfg.model if k != "name"], hparams=_hparams(cfg))


class Scripted(pl.LightningModule):
    """A module whose weight equals the epoch index and whose val/acc follows a script."""

    def __init__(self, script: list[float]):
        super().__init__()
        self.net = nn.Linear(1, 1, bias=False)
        self.script = script
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.net.weight.fill_(self.current_epoch)
        Classifier.publish(self, {"train/loss": 1.0 / (1 + self.current_epoch),
                                  "val/acc": self.script[self.current_epoch]})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit_scripted(script, callbacks, max_epochs):
    module = Scripted(script)
    data = [torch.zeros(1)]
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         accelerator="cpu", log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=data)
    return module


def test_early_stopping_restores_the_weights_of_the_known_best_epoch():
    from regbench.regularizers.criteria import Patience
    from regbench.regularizers.early_stopping import CriterionStopping

    # val/acc peaks at epoch 3 (0.9); patience 2 stops after epochs 4 and 5 fail to improve
    script = [0.5, 0.6, 0.7, 0.9, 0.8, 0.85, 0.95, 0.99]
    best = BestWeights("val/acc", "max", restore=True)
    stop = CriterionStopping(Patience(2, 0.0), monitor="val/acc", mode="max")
    module = fit_scripted(script, [stop, best], max_epochs=len(script))
    assert stop.stopped_epoch == 5
    assert best.best_epoch == 3 and best.restored
    assert module.net.weight.item() == 3.0  # the weights written in epoch 3, not the last ones (5)


def test_without_restore_the_final_weights_are_kept():
    best = BestWeights("val/acc", "max", restore=False)
    module = fit_scripted([0.5, 0.9, 0.6, 0.7], [best], max_epochs=4)
    assert best.best_epoch == 1 and not best.restored
    assert module.net.weight.item() == 3.0


def test_history_has_one_row_per_epoch():
    hist = History()
    fit_scripted([0.1, 0.2, 0.3], [hist], max_epochs=3)
    assert hist.rows["epoch"] == [0, 1, 2]
    assert hist.rows["val/acc"] == pytest.approx([0.1, 0.2, 0.3])
    assert hist.rows["train/loss"] == pytest.approx([1.0, 0.5, 1 / 3])


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    a = train_in_process(tmp_path / "a", *tiny("seed=3"))
    b = train_in_process(tmp_path / "b", *tiny("seed=3"))
    c = train_in_process(tmp_path / "c", *tiny("seed=4"))
    assert a["metrics"]["test/acc"] == b["metrics"]["test/acc"]
    assert a["history"] == b["history"]
    assert a["history"] != c["history"]


def test_a_run_records_what_it_did(tmp_path):
    r = train_in_process(tmp_path, *tiny())
    assert r["status"] == "ok"
    assert r["epochs_trained"] == 3 and r["steps"] == 3 * 35  # 3500 training examples / batch 100
    assert r["history"]["epoch"] == [0, 1, 2]
    assert 0.1 < r["metrics"]["test/acc"] <= 1 and r["metrics"]["best_val/acc"] == max(r["history"]["val/acc"])
    assert not r["stopped_early"] and not r["restored_best"]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_early_stop_arm_tests_the_restored_best_epoch(tmp_path):
    r = train_in_process(tmp_path, "regularizer=early_stop", "regularizer.early_stop.patience=2",
                         "trainer.max_epochs=40", "trainer.progress_every=0")
    assert r["stopped_early"] and r["restored_best"]
    assert r["stopped_epoch"] == r["best_epoch"] + 2
    # the reason names the monitored accuracy as it was and the record's own (0-based) epochs
    assert (f"val/acc did not improve by more than 0 on its best {r['metrics']['best_val/acc']:.4g} "
            f"(epoch {r['best_epoch']}) for 2 epochs; stopped at epoch {r['stopped_epoch']}") in r["stop_reason"]
    assert r["epochs_trained"] == r["stopped_epoch"] + 1
    # the weights evaluated at the end are those of the best epoch: same validation accuracy
    assert r["metrics"]["val/acc"] == pytest.approx(r["history"]["val/acc"][r["best_epoch"]], abs=1e-6)


def test_divergence_is_recorded_not_averaged(tmp_path):
    r = train_in_process(tmp_path, *tiny("optim=sgd", "optim.lr=1e6"))
    assert r["status"] == "diverged"
    assert r["diverged_epoch"] == 0 and r["epochs_trained"] >= 1
    assert "non-finite" in r["error"]
    assert math.isnan(r["history"]["train/loss"][0]) or math.isinf(r["history"]["train/loss"][0])


def test_resuming_from_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path):
    from regbench.rundir import last_checkpoint

    arm = ["regularizer=dropout", "trainer.progress_every=0", "trainer.checkpoint_every=2", "seed=5"]
    whole = train_in_process(tmp_path / "whole", *arm, "trainer.max_epochs=6")
    # the "interrupted" run: stops after 4 epochs with a checkpoint of epoch 3, then resumes to 6
    part = tmp_path / "part"
    train_in_process(part, *arm, "trainer.max_epochs=4")
    ckpt = last_checkpoint(part)
    assert ckpt is not None
    cfg = compose([*arm, "trainer.max_epochs=6"])
    resumed = train(validate(cfg), part, data_keys=[k for k in cfg.data if k != "name"],
                    model_keys=[k for k in cfg.model if k != "name"], resume=ckpt)
    assert resumed["extra"]["resumed"]
    assert resumed["history"] == whole["history"]
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["steps"] == whole["steps"]
