"""Stacked replicas vs separate runs: seed-steps per second through regbench's own paths.

    .venv/bin/python benchmarks/bench_replicas.py [--repeats 3] [--epochs 5] [--replicas 10]
                                                   [--arms none dropout] [--scaling 1 10 100]

1. S seeds of one arm on the default MNIST-1D MLP, one torch thread, on the CPU:
   * separate: S calls of ``app.train`` (Lightning, the path every run takes today), seeds 0..S-1;
   * stacked:  one call of ``training.replicas.train_from_config`` with the same S seeds.
   Both produce the same records (data, model, final evaluation, mechanism measures included).
   "call" times the whole call (set-up, training, final evaluation); "loop" only the training
   loop (``train_seconds``: the epochs with their validation). The runs are interleaved, repeat
   by repeat, and the table gives medians; CPU seconds (``time.process_time``) are shown too,
   as wall time on a shared machine partly measures the other jobs.
2. Scaling: stacked groups of S = 1 .. 1000 replicas (CUDA when available: S = 1, 100, 1000; on
   the CPU only with ``--scaling``), training loop only, as seed-steps/s and relative to S = 1.

Target: stacked / separate >= 3x seed-steps/s for S = 10 on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _config(arm: str, epochs: int, seed: int = 0, extra: tuple[str, ...] = ()):
    from conftest import compose
    from regbench.config import validate

    cfg = compose([f"regularizer={arm}", f"trainer.max_epochs={epochs}", "trainer.progress_every=0",
                   "trainer.threads=1", f"seed={seed}", *extra])
    return validate(cfg), [k for k in cfg.data if k != "name"], [k for k in cfg.model if k != "name"]


def _separate(arm: str, epochs: int, seeds: list[int], extra: tuple[str, ...] = ()) -> dict:
    from regbench.app import train

    wall = cpu = loop = 0.0
    steps = 0
    for seed in seeds:
        rc, dk, mk = _config(arm, epochs, seed, extra)
        with tempfile.TemporaryDirectory() as d:
            t, c = time.perf_counter(), time.process_time()
            r = train(rc, Path(d), data_keys=dk, model_keys=mk)
            wall += time.perf_counter() - t
            cpu += time.process_time() - c
        loop += r["train_seconds"]
        steps += r["steps"]
    return {"wall": wall, "cpu": cpu, "loop": loop, "steps": steps}


def _stacked(arm: str, epochs: int, seeds: list[int], extra: tuple[str, ...] = ()) -> dict:
    from regbench.training.replicas import train_from_config

    rc, dk, mk = _config(arm, epochs, 0, extra)
    t, c = time.perf_counter(), time.process_time()
    recs = train_from_config(rc, seeds, dk, mk)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall": wall, "cpu": cpu, "loop": recs[0]["extra"]["stacked_train_seconds"],
            "steps": sum(r["steps"] for r in recs)}


def _median(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "loop")}
    out["steps"] = runs[0]["steps"]
    for k in ("wall", "cpu", "loop"):
        out[f"seed_steps_per_s_{k}"] = out["steps"] / out[k]
    return out


def measure(repeats: int = 3, epochs: int = 5, replicas: int = 10, arms: tuple[str, ...] = ("none", "dropout"),
            scaling: tuple[int, ...] = ()) -> dict:
    """{"cpu": {arm: {"separate": .., "stacked": .., "ratio_*": ..}}, "scaling": {...}, "machine": ..}."""
    import warnings

    import pytorch_lightning  # noqa: F401  (imported first: it sets its loggers' levels on import)
    import torch

    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    seeds = list(range(replicas))
    result: dict = {"cpu": {}, "scaling": {}, "epochs": epochs, "replicas": replicas, "repeats": repeats,
                    "torch": torch.__version__, "threads": 1}
    cpu = ("trainer.accelerator=cpu",)
    for arm in arms:
        _separate(arm, 1, [0], cpu), _stacked(arm, 1, [0, 1], cpu)  # warm-up: imports, first-call costs
        sep, st = [], []
        for _ in range(repeats):
            sep.append(_separate(arm, epochs, seeds, cpu))
            st.append(_stacked(arm, epochs, seeds, cpu))
        a, b = _median(sep), _median(st)
        result["cpu"][arm] = {"separate": a, "stacked": b,
                              **{f"ratio_{k}": b[f"seed_steps_per_s_{k}"] / a[f"seed_steps_per_s_{k}"]
                                 for k in ("wall", "cpu", "loop")}}
    devices = []
    if torch.cuda.is_available():
        devices.append(("cuda", (1, 100, 1000)))
    if scaling:
        devices.append(("cpu", tuple(scaling)))
    for device, sizes in devices:
        extra = (f"trainer.accelerator={'cuda' if device == 'cuda' else 'cpu'}",)
        _stacked("none", 1, [0], extra)  # warm-up (CUDA context, kernels)
        rows = {}
        for S in sizes:
            runs = [_stacked("none", epochs, list(range(S)), extra) for _ in range(repeats)]
            rows[S] = _median(runs)
        base = rows[sizes[0]]["seed_steps_per_s_loop"]
        for S in sizes:
            rows[S]["speedup_vs_first"] = rows[S]["seed_steps_per_s_loop"] / base
        if device == "cuda":
            result["gpu_name"] = torch.cuda.get_device_name(0)
            one = [_separate("none", epochs, [0], extra) for _ in range(repeats)]
            rows["separate_1"] = _median(one)
        result["scaling"][device] = rows
    return result


def render(r: dict) -> str:
    lines = [f"# Stacked replicas vs separate runs (MNIST-1D MLP, {r['epochs']} epochs, {r['threads']} thread, "
             f"torch {r['torch']}, median of {r['repeats']})", ""]
    lines += [f"## S = {r['replicas']} seeds on the CPU", "",
              "| arm | path | seed-steps | call s | loop s | CPU s | seed-steps/s (call) | seed-steps/s (loop) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arm, v in r["cpu"].items():
        for path in ("separate", "stacked"):
            m = v[path]
            lines.append(f"| {arm} | {path} | {m['steps']} | {m['wall']:.2f} | {m['loop']:.2f} | {m['cpu']:.2f} | "
                         f"{m['seed_steps_per_s_wall']:.0f} | {m['seed_steps_per_s_loop']:.0f} |")
        lines.append(f"| {arm} | **stacked / separate** | | | | | **{v['ratio_wall']:.2f}x** | "
                     f"**{v['ratio_loop']:.2f}x** (CPU time: {v['ratio_cpu']:.2f}x) |")
    for device, rows in r["scaling"].items():
        name = r.get("gpu_name", device) if device == "cuda" else "CPU, 1 thread"
        lines += ["", f"## Scaling on {name} (regularizer=none, training loop)", "",
                  "| S | seed-steps | loop s | seed-steps/s | vs smallest S |", "|---:|---:|---:|---:|---:|"]
        for S, m in rows.items():
            if S == "separate_1":
                continue
            lines.append(f"| {S} | {m['steps']} | {m['loop']:.2f} | {m['seed_steps_per_s_loop']:.0f} | "
                         f"{m['speedup_vs_first']:.1f}x |")
        if "separate_1" in rows:
            m = rows["separate_1"]
            lines.append(f"| 1 (app.train, separate) | {m['steps']} | {m['loop']:.2f} | "
                         f"{m['seed_steps_per_s_loop']:.0f} | |")
    if not r["scaling"]:
        lines += ["", "(no CUDA device: the S = 1 / 100 / 1000 scaling rows are skipped; "
                      "--scaling runs them on the CPU)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--arms", nargs="+", default=["none", "dropout"])
    ap.add_argument("--scaling", nargs="*", type=int, default=[], help="stacked group sizes to time on the CPU")
    args = ap.parse_args()
    print(render(measure(args.repeats, args.epochs, args.replicas, tuple(args.arms), tuple(args.scaling))))


if __name__ == "__main__":
    main()
