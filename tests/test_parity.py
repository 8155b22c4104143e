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


def test_a_run_ends_with_the_plain_loops_weights_bit_for_bit(tmp_path):
    """Not only the losses: after 20 epochs (700 Adam steps, where a last-bit difference has long
    been amplified: an lr rounded to float32 parted the runs by 1e-3 at epoch 8) the run's saved
    weights are the plain loop's, exactly."""
    import torch

    from regbench.app import WEIGHTS_FILE
    from regbench.config import validate
    from regbench.data import build_data

    epochs = 20
    train_in_process(tmp_path, f"trainer.max_epochs={epochs}", "trainer.progress_every=0", "seed=3",
                     "trainer.threads=1")
    rc = validate(compose())
    data = build_data("mnist1d", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, generator_seed=rc.data.generator_seed)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, _, net = raw_train(data.x_train, data.y_train, seed=3, epochs=epochs, batch_size=rc.optim.batch_size,
                              lr=rc.optim.lr)
    finally:
        torch.set_num_threads(before)
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)["state_dict"]
    assert len(saved) == len(list(net.parameters()))
    for (name, ours), theirs in zip(saved.items(), net.parameters()):
        assert torch.equal(ours, theirs.detach()), name
