"""Why runs flush subnormal floats to zero: one population of 3 replicas of the mnist5k MLP with weight
decay, trained by the engine with the flush off and on (one process each).

    .venv/bin/python benchmarks/subnormals.py [--epochs 170] [--flush 0|1] [--arm weight_decay]

Prints the training time and the first replica's validation accuracy. Measured once (2-core x86_64,
170 epochs, weight_decay 0.0037, lr 0.0012): 382.6 s with the flush off, 27.4 s with it on, val/acc 0.946
both. Not part of `make bench` (the slow case takes minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=170)
    ap.add_argument("--flush", type=int, choices=(0, 1), default=0)
    ap.add_argument("--arm", default="weight_decay")
    args = ap.parse_args()
    from conftest import compose
    from regbench.app import network_of, regularization_of
    from regbench.config import validate
    from regbench.data import build_data
    from regbench.engine.fit import Replica, fit

    torch.set_num_threads(1)
    cfg = compose([f"regularizer={args.arm}", "+setting=mnist5k_mlp", f"trainer.max_epochs={args.epochs}"]
                  + (["regularizer.weight_decay=0.0037"] if args.arm == "weight_decay" else []))
    rc = validate(cfg)
    reg = regularization_of(rc)
    data = build_data("mnist5k", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, test_size=rc.data.test_size, test_seed=rc.data.test_seed, resize=None)
    nets = []
    for s in range(3):
        torch.manual_seed(s)
        nets.append(network_of(rc, data, reg, [k for k in cfg.model if k != "name"]))
    torch.set_flush_denormal(bool(args.flush))   # fit() itself leaves the flag as it finds it
    t0 = time.perf_counter()
    recs, _, _ = fit(nets, [Replica(seed=s, reg=reg, lr=0.0012) for s in range(3)], data, optim_name="adam",
                     batch_size=rc.optim.batch_size, max_epochs=args.epochs, eval_batch_size=1000)
    print(f"{args.arm}, flush {'on' if args.flush else 'off'}: {time.perf_counter() - t0:.1f} s, "
          f"val/acc {recs[0]['metrics']['val/acc']:.3f}")


if __name__ == "__main__":
    main()
