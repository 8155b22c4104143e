"""Checkpoints are data, never code, and only their own run resumes from them.

A planted pickle must not run (every load is `weights_only=True`, Lightning's resume load too); a
checkpoint copied from another run, or a truncated one, is moved aside with a warning naming it and
the run starts fresh (before: seed 1's checkpoint in seed 0's folder resumed silently and gave a
wrong `ok` record; a truncated one failed the run on every rerun).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose
from regbench.app import _run_locked, checkpoint_owner, train
from regbench.config import validate
from regbench.naming import run_id
from regbench.records import read_record
from regbench.rundir import CHECKPOINT_DIR, REFUSED_DIR, last_checkpoint

ARM = ["regularizer=dropout", "trainer.progress_every=0", "trainer.checkpoint_every=2"]


class Plant:
    """Unpickling this creates `marker`: the stand-in for arbitrary code in a planted checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": {}, "payload": Plant(marker)}, path)
    # the plant is live: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def run_folder(root: Path, cfg) -> Path:
    d = root / "default" / run_id(cfg)
    d.mkdir(parents=True, exist_ok=True)
    return d


def keys(cfg):
    return dict(data_keys=[k for k in cfg.data if k != "name"], model_keys=[k for k in cfg.model if k != "name"])


def own_checkpoint(tmp: Path, *overrides: str) -> Path:
    """A real checkpoint of the config `overrides` (a 4-epoch run, saved at epoch 3), stamped for its run."""
    cfg = compose([*ARM, "trainer.max_epochs=4", *overrides])
    d = tmp / f"ckpt-{abs(hash(overrides))}"
    cfg6 = compose([*ARM, "trainer.max_epochs=6", *overrides])  # the run that will resume it
    train(validate(cfg), d, **keys(cfg), checkpoint_owner=checkpoint_owner(cfg6, run_folder(tmp / "x", cfg6)))
    return last_checkpoint(d)


def assert_refused(run_dir: Path, caplog, why: str) -> dict:
    record = read_record(run_dir / "results.json")
    assert record["status"] == "ok" and not record["extra"]["resumed"]
    assert record["history"]["epoch"] == list(range(6))  # trained from the first epoch
    (aside,) = (run_dir / REFUSED_DIR).iterdir()  # kept as evidence, out of the way
    assert not (run_dir / CHECKPOINT_DIR).exists()
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not resuming" in r.getMessage())
    assert str(run_dir / CHECKPOINT_DIR / "last.ckpt") in warning and str(aside) in warning and why in warning
    return record


@pytest.fixture
def unsafe_default(monkeypatch):
    """torch >= 2.6 defaults to weights_only=True, but this (documented) variable turns that default off:
    only an explicit weights_only=True at every load keeps a planted pickle inert."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_a_planted_pickle_in_a_checkpoint_runs_no_code(tmp_path, caplog, unsafe_default):
    cfg = compose([*ARM, "trainer.max_epochs=6"])
    run_dir = run_folder(tmp_path, cfg)
    marker = tmp_path / "pwned"
    plant(run_dir / CHECKPOINT_DIR / "last.ckpt", marker)
    with caplog.at_level(logging.WARNING, logger="regbench"):
        assert _run_locked(cfg, validate(cfg), run_dir) == "ok"
    assert not marker.exists()
    assert_refused(run_dir, caplog, "cannot be read safely")


def test_lightning_resume_load_is_weights_only_too(tmp_path, unsafe_default):
    """Past regbench's own check: Trainer.fit(ckpt_path=...) is called with weights_only=True."""
    cfg = compose([*ARM, "trainer.max_epochs=6"])
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "last.ckpt"
    plant(ckpt, marker)
    with pytest.raises(Exception) as refused:
        train(validate(cfg), tmp_path / "run", **keys(cfg), resume=ckpt)
    assert not marker.exists()
    assert "Weights only load failed" in str(refused.value)


def test_a_checkpoint_copied_from_another_run_is_refused(tmp_path, caplog):
    cfg = compose([*ARM, "trainer.max_epochs=6", "seed=0"])
    run_dir = run_folder(tmp_path / "runs", cfg)
    (run_dir / CHECKPOINT_DIR).mkdir()
    shutil.copy(own_checkpoint(tmp_path, "seed=1"), run_dir / CHECKPOINT_DIR / "last.ckpt")  # seed 1's
    with caplog.at_level(logging.WARNING, logger="regbench"):
        assert _run_locked(cfg, validate(cfg), run_dir) == "ok"
    record = assert_refused(run_dir, caplog, "belongs to another run")
    fresh = train(validate(cfg), tmp_path / "fresh", **keys(cfg))
    assert record["metrics"] == fresh["metrics"] and record["history"] == fresh["history"]


def test_a_truncated_checkpoint_is_moved_aside_and_its_own_one_resumes(tmp_path, caplog):
    cfg = compose([*ARM, "trainer.max_epochs=6", "seed=0"])
    own = own_checkpoint(tmp_path, "seed=0")
    # its own, whole checkpoint is resumed from
    run_dir = run_folder(tmp_path / "x", cfg)
    (run_dir / CHECKPOINT_DIR).mkdir()
    shutil.copy(own, run_dir / CHECKPOINT_DIR / "last.ckpt")
    assert _run_locked(cfg, validate(cfg), run_dir) == "ok"
    assert read_record(run_dir / "results.json")["extra"]["resumed"]
    # cut in half: refused, moved aside, fresh start
    run_dir = run_folder(tmp_path / "runs", cfg)
    (run_dir / CHECKPOINT_DIR).mkdir()
    data = own.read_bytes()
    (run_dir / CHECKPOINT_DIR / "last.ckpt").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="regbench"):
        assert _run_locked(cfg, validate(cfg), run_dir) == "ok"
    assert_refused(run_dir, caplog, "cannot be read safely")
