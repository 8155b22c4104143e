"""Evaluate a finished run's saved weights again, later, possibly on other data.

    python -m regbench.evaluate RUN_DIR [--data NAME] [--set data.KEY=VALUE ...] [--out FILE]

Reads RUN_DIR/results.json (the run's resolved config) and RUN_DIR/best.ckpt (the weights its
metrics were measured on, a plain state_dict loaded with `torch.load(weights_only=True)`: no code
in the file is ever run), rebuilds the data and the network from the config, and prints the
train / val / test accuracy and loss as JSON (and writes them to --out). With the run's own data
the numbers equal the record's (MC-dropout arms draw fresh masks, so theirs agree only in
distribution). `--data NAME` swaps in conf/data/NAME.yaml (its input shape must fit the network);
`--set data.train_size=1000` changes one data key. Exit status 2 on a missing or unreadable run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m regbench.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run folder holding results.json and best.ckpt")
    p.add_argument("--data", help="evaluate on conf/data/NAME.yaml instead of the run's data")
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE", help="override one data key")
    p.add_argument("--out", help="also write the metrics as JSON to this file")
    return p


def _config(record: dict, data: str | None, sets: list[str]):
    cfg = OmegaConf.create(record["config"])
    if data:
        path = CONF / "data" / f"{data}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
            raise SystemExit(f"regbench.evaluate: --data {data!r} is not a dataset: choose one of {known}")
        cfg.data = OmegaConf.merge(OmegaConf.load(path), {"root": cfg.data.get("root")})
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("data."):
            raise SystemExit(f"regbench.evaluate: --set {item!r}: expected data.KEY=VALUE")
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value else None, merge=True)
    return cfg


def evaluate_run(run_dir: Path, data: str | None = None, sets: list[str] | None = None) -> dict[str, float]:
    import torch

    from regbench import app
    from regbench.config import validate
    from regbench.data import build_data
    from regbench.records import RESULTS_FILE, read_record
    from regbench.training.loop import evaluate

    record = read_record(run_dir / RESULTS_FILE)
    cfg = _config(record, data, sets or [])
    rc = validate(cfg)
    saved = torch.load(run_dir / app.WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if rc.trainer.threads:
        torch.set_num_threads(rc.trainer.threads)
    splits = build_data(rc.data.name, **{k: getattr(rc.data, k) for k in cfg.data if k != "name"})
    reg = app.regularization_of(rc)
    net = app.network_of(rc, splits, reg, [k for k in cfg.model if k != "name"])
    try:
        net.load_state_dict(saved["state_dict"])
    except RuntimeError as e:  # other data whose inputs give the network other shapes
        raise ValueError(f"the saved weights do not fit a {rc.model.name} built for data={rc.data.name} "
                         f"(input {tuple(splits.input_shape)}): {str(e).splitlines()[-1].strip()}") from None
    chunk = rc.trainer.eval_batch_size
    out = {}
    for split, (x, y) in {"train": (splits.x_train, splits.y_train), "val": (splits.x_val, splits.y_val),
                          "test": (splits.x_test, splits.y_test)}.items():
        m = evaluate(net, x, y, chunk, mc_samples=reg.mc_samples)
        out[f"{split}/acc"], out[f"{split}/loss"] = m["acc"], m["loss"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [f for f in ("results.json", "best.ckpt") if not (run_dir / f).is_file()]
    if missing:
        print(f"regbench.evaluate: {run_dir} has no {' and no '.join(missing)} (best.ckpt is written by every "
              f"separately trained run that finishes; stacked replicas write none)", file=sys.stderr)
        return 2
    try:
        metrics = evaluate_run(run_dir, args.data, args.set)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"regbench.evaluate: {run_dir}: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
