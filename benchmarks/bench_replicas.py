"""Stacked replicas vs separate runs: seed-steps per second through regbench's own paths.

    .venv/bin/python benchmarks/bench_replicas.py [--repeats 3] [--epochs 5] [--replicas 10]
                                                   [--arms none dropout] [--scaling 1 10 100]
                                                   [--settings mnist1d_cnn1d:5 mnist5k_seed_cnn:1]
                                                   [--device cpu|cuda]

1. S seeds of one arm on the default MNIST-1D MLP, one torch thread, on ``--device`` (CPU by default):
   * separate: S calls of ``app.train`` (Lightning, the path every run takes today), seeds 0..S-1;
   * stacked:  one call of ``app.train_population`` with the same S seeds (one population).
   Both produce the same records (data, model, final evaluation, mechanism measures included).
   "call" times the whole call (set-up, training, final evaluation); "loop" only the training
   loop (``train_seconds``: the epochs with their validation). The runs are interleaved, repeat
   by repeat, and the table gives medians; CPU seconds (``time.process_time``) are shown too,
   as wall time on a shared machine partly measures the other jobs.
   ``--settings NAME:EPOCHS ...`` repeats this for study settings (``conf/setting/NAME.yaml``, e.g.
   the conv nets) at the given number of epochs each, with the first of ``--arms``.
2. Scaling: stacked groups of S = 1 .. 1000 replicas (CUDA when available: S = 1, 100, 1000; on
   the CPU only with ``--scaling``), training loop only, as seed-steps/s and relative to S = 1,
   and one separate run (``app.train``) on the same device as the single-run baseline.

Targets: stacked / separate >= 3x seed-steps/s for S = 10 on the CPU; on a GPU, S = 1000 stacked
>= 300x the steps/s of one separate run.
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
    from omegaconf import OmegaConf

    from conftest import compose
    from regbench.app import train_population
    from regbench.config import validate

    cfg = compose([f"regularizer={arm}", f"trainer.max_epochs={epochs}", "trainer.progress_every=0",
                   "trainer.threads=1", *extra])
    cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in seeds]
    rcs = [validate(c) for c in cfgs]
    with tempfile.TemporaryDirectory() as d:
        dirs = [Path(d) / str(s) for s in seeds]
        for p in dirs:
            p.mkdir()
        t, c = time.perf_counter(), time.process_time()
        recs = train_population(cfgs, rcs, dirs, label="bench")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall": wall, "cpu": cpu, "loop": recs[0]["extra"]["population_train_seconds"],
            "steps": sum(r["steps"] for r in recs)}


def _median(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "loop")}
    out["steps"] = runs[0]["steps"]
    for k in ("wall", "cpu", "loop"):
        out[f"seed_steps_per_s_{k}"] = out["steps"] / out[k]
    return out


def _compare(arm: str, epochs: int, seeds: list[int], extra: tuple[str, ...], repeats: int) -> dict:
    _separate(arm, 1, [0], extra), _stacked(arm, 1, [0, 1], extra)  # warm-up: imports, first-call costs
    sep, st = [], []
    for _ in range(repeats):
        sep.append(_separate(arm, epochs, seeds, extra))
        st.append(_stacked(arm, epochs, seeds, extra))
    a, b = _median(sep), _median(st)
    out = {"separate": a, "stacked": b,
           **{f"ratio_{k}": b[f"seed_steps_per_s_{k}"] / a[f"seed_steps_per_s_{k}"] for k in ("wall", "cpu", "loop")}}
    print(f"[bench_replicas] {' '.join(extra)} {arm} {epochs} epochs: separate {a['wall']:.2f} s, stacked "
          f"{b['wall']:.2f} s, {out['ratio_wall']:.2f}x", file=sys.stderr, flush=True)  # progress on long runs
    return out


def measure(repeats: int = 3, epochs: int = 5, replicas: int = 10, arms: tuple[str, ...] = ("none", "dropout"),
            scaling: tuple[int, ...] = (), settings: tuple[tuple[str, int], ...] = (), device: str = "cpu",
            gpu_scaling: tuple[int, ...] = (1, 100, 1000)) -> dict:
    """{"cpu": {arm: {"separate": .., "stacked": .., "ratio_*": ..}}, "settings": {...}, "scaling": {...}, ..}
    ("cpu" holds the part-1 rows whatever ``device`` they ran on; ``result["device"]`` says which)."""
    import warnings

    import pytorch_lightning  # noqa: F401  (imported first: it sets its loggers' levels on import)
    import torch

    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    seeds = list(range(replicas))
    result: dict = {"cpu": {}, "settings": {}, "scaling": {}, "epochs": epochs, "replicas": replicas,
                    "repeats": repeats, "torch": torch.__version__, "threads": 1, "device": device}
    if device == "cuda":
        result["gpu_name"] = torch.cuda.get_device_name(0)
    on = (f"trainer.accelerator={device}",)
    for arm in arms:
        result["cpu"][arm] = _compare(arm, epochs, seeds, on, repeats)
    for name, n_epochs in settings:
        result["settings"][name] = {"arm": arms[0] if arms else "dropout", "epochs": n_epochs,
                                    **_compare(arms[0] if arms else "dropout", n_epochs, seeds,
                                               (*on, f"+setting={name}"), repeats)}
    devices = []
    if torch.cuda.is_available() and gpu_scaling:
        devices.append(("cuda", tuple(gpu_scaling)))
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
            rows["separate_1"]["largest_vs_separate"] = (rows[sizes[-1]]["seed_steps_per_s_loop"]
                                                         / rows["separate_1"]["seed_steps_per_s_loop"])
        result["scaling"][device] = rows
    return result


def render(r: dict) -> str:
    lines = [f"# Stacked replicas vs separate runs ({r['epochs']} epochs unless the row says, {r['threads']} thread, "
             f"torch {r['torch']}, median of {r['repeats']})", ""]
    where = r.get("gpu_name", "cuda") if r.get("device") == "cuda" else "the CPU"
    rows = [("mnist1d_mlp", arm, r["epochs"], v) for arm, v in r["cpu"].items()]
    rows += [(name, v["arm"], v["epochs"], v) for name, v in r.get("settings", {}).items()]
    if rows:
        lines += [f"## S = {r['replicas']} seeds on {where}", "",
                  "| setting | arm | epochs | path | seed-steps | call s | loop s | CPU s | seed-steps/s (call) | "
                  "seed-steps/s (loop) |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for setting, arm, epochs, v in rows:
        for path in ("separate", "stacked"):
            m = v[path]
            lines.append(f"| {setting} | {arm} | {epochs} | {path} | {m['steps']} | {m['wall']:.2f} | {m['loop']:.2f} | "
                         f"{m['cpu']:.2f} | {m['seed_steps_per_s_wall']:.0f} | {m['seed_steps_per_s_loop']:.0f} |")
        lines.append(f"| {setting} | {arm} | | **stacked / separate** | | | | | **{v['ratio_wall']:.2f}x** | "
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
            lines += ["", f"S = {max(k for k in rows if k != 'separate_1')} stacked / one separate run, steps/s "
                          f"(training loop): **{m['largest_vs_separate']:.0f}x**"]
    if not r["scaling"] and r.get("device") != "cuda":
        lines += ["", "(no CUDA device: the S = 1 / 100 / 1000 scaling rows are skipped; "
                      "--scaling runs them on the CPU)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--arms", nargs="*", default=["none", "dropout"])
    ap.add_argument("--scaling", nargs="*", type=int, default=[], help="stacked group sizes to time on the CPU")
    ap.add_argument("--settings", nargs="*", default=[], metavar="NAME:EPOCHS",
                    help="study settings to compare too, e.g. mnist1d_cnn1d:5 (first of --arms, dropout if none)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where part 1 runs")
    ap.add_argument("--gpu-scaling", nargs="*", type=int, default=[1, 100, 1000],
                    help="stacked group sizes to time on CUDA when there is one (none: skip)")
    args = ap.parse_args()
    settings = tuple((s.split(":")[0], int(s.split(":")[1]) if ":" in s else args.epochs) for s in args.settings)
    print(render(measure(args.repeats, args.epochs, args.replicas, tuple(args.arms), tuple(args.scaling),
                         settings, args.device, tuple(args.gpu_scaling))))


if __name__ == "__main__":
    main()
