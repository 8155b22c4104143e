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


def train_in_process(tmp_path, *overrides: str) -> dict:
    """`app.train` on the real composed config, in this process (no CLI start-up)."""
    cfg = compose(list(overrides))
    rc = validate(cfg)
    return train(rc, tmp_path, data_keys=[k for k in cfg.data if k != "name"],
                 model_keys=[k for k in cfg.model if k != "name"], hparams=_hparams(cfg))


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


def test_a_run_flushes_subnormal_floats_to_zero(tmp_path):
    # subnormals stall CPU arithmetic (a weight-decay population on mnist5k ran 14x slower with them):
    # a run turns the flush on, where the CPU supports it
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (no FTZ/DAZ)")
    tiny_value = torch.tensor([1e-39], dtype=torch.float32)
    assert float(tiny_value * 1.0) != 0.0                     # kept while the flush is off
    train_in_process(tmp_path, *tiny("seed=0"))
    assert float(tiny_value * 1.0) == 0.0
