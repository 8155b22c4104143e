"""regbench's training path takes exactly the steps of a plain PyTorch loop (Lightning's parity-test idea)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT, compose
from test_training import train_in_process

sys.path.insert(0, str(ROOT / "benchmarks"))
from parity import raw_train  # noqa: E402


def test_regbench_none_matches_a_plain_pytorch_loop_to_5_decimals(tmp_path):
    from regbench.config import validate
    from regbench.data import build_data

    epochs = 4
    r = train_in_process(tmp_path, f"trainer.max_epochs={epochs}", "trainer.progress_every=0", "seed=7")
    rc = validate(compose())
    data = build_data("mnist1d", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, generator_seed=rc.data.generator_seed)
    raw, _, _ = raw_train(data.x_train, data.y_train, seed=7, epochs=epochs,
                          batch_size=rc.optim.batch_size, lr=rc.optim.lr)
    assert r["history"]["train/loss"] == pytest.approx(raw, abs=1e-5)
    # and it is a real trajectory, not a constant: the loss falls
    assert raw[-1] < raw[0] - 0.3
