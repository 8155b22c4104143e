"""`make bench`: regbench's speed as ratios against baselines measured in the same run.

    1. framework overhead   regbench run (regularizer=none, in process) / plain PyTorch loop,
                            same model, data, seed, batch order, steps and threads; parity checked
    2. dropout step cost    step time with dropout p=0.5 / without, plain loop (ours and torch's)
    3. replicas             10 seeds stacked in one model / 10 separate runs (seed-steps per second),
                            in process for 20 epochs, and as whole commands at the default 170 epochs;
                            a population of 50 (10 seeds x 5 dropout rates) / a raw batched-matmul loop
                            of the same 50-replica MLP written here (the ceiling of stacking); rows
                            mode (the engine's fast path) / vmap, and / the raw loop, at 10 replicas;
                            loop mode (conv models) / vmap and / separate runs: the MNIST-1D CNN at 10
                            replicas, the seed document's CNN at 4; a tuned study's 10 random start-up
                            trials x 3 seeds (each trial its own lr and p) as one population / one
                            trial's 3 seeds at a time
    4. parallel sweep       2 arms x 4 seeds: basic launcher / joblib launcher (2 jobs x 1 thread), and
                            basic / the default (stacking) launcher
    5. start-up             `python run.py --help`; a 1-epoch run, its import and set-up seconds

Writes benchmarks/results.md (and prints it). Timing is wall clock, median of repeats; the
numbers are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def framework_overhead(repeats: int, epochs: int) -> dict:
    import torch

    from conftest import compose
    from parity import raw_train
    from regbench.app import train
    from regbench.config import validate
    from regbench.data import build_data

    torch.set_num_threads(1)
    over = [f"trainer.max_epochs={epochs}", "trainer.progress_every=0", "trainer.threads=1"]
    cfg = compose(over)
    rc = validate(cfg)
    data = build_data("mnist1d", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, generator_seed=rc.data.generator_seed)
    raw_t, reg_t, parity = [], [], None
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        losses, seconds, _ = raw_train(data.x_train, data.y_train, seed=rc.seed, epochs=epochs,
                                       batch_size=rc.optim.batch_size, lr=rc.optim.lr)
        raw_t.append(seconds)
        with tempfile.TemporaryDirectory() as d:
            r = train(rc, Path(d), data_keys=[k for k in cfg.data if k != "name"],
                      model_keys=[k for k in cfg.model if k != "name"])
        reg_t.append(r["train_seconds"])
        parity = max(abs(a - b) for a, b in zip(losses, r["history"]["train/loss"]))
    steps = r["steps"]
    raw, reg = statistics.median(raw_t), statistics.median(reg_t)
    return {"raw_seconds": raw, "regbench_seconds": reg, "ratio": reg / raw, "steps": steps,
            "raw_steps_per_s": steps / raw, "regbench_steps_per_s": steps / reg, "max_loss_diff": parity}


def dropout_cost(repeats: int) -> dict | None:
    try:
        import bench_dropout
    except ImportError:
        return None
    return bench_dropout.measure()  # 41 interleaved rounds of 50 steps, CPU time (robust to other load)


REPLICA_EPOCHS = 20
POPULATION_EPOCHS = 10


def replica_speedup(repeats: int) -> dict | None:
    try:
        import bench_replicas
    except ImportError:
        return None
    # 20 epochs (700 steps a seed) and at least 5 interleaved repeats: at 5 epochs a stacked group
    # takes ~0.5 s and the ratio moved by +-20% between runs of the benchmark
    return bench_replicas.measure(repeats=max(repeats, 5), epochs=REPLICA_EPOCHS)["cpu"]


def stacked_commands(epochs: int) -> dict:
    """10 seeds of the dropout MLP: one population (replicas=10) / 10 separate runs (a basic-launcher
    sweep in one process), whole commands, report off."""
    common = ["regularizer=dropout", f"trainer.max_epochs={epochs}", "trainer.progress_every=0", "trainer.threads=1",
              "~hydra.callbacks.report"]
    with tempfile.TemporaryDirectory() as d:
        separate, _ = timed([sys.executable, "run.py", "-m", "hydra/launcher=basic", "seed=range(10)", *common,
                             f"runs_root={d}"])
    with tempfile.TemporaryDirectory() as d:
        stacked, _ = timed([sys.executable, "run.py", "replicas=10", *common, f"runs_root={d}"])
    return {"separate": separate, "stacked": stacked, "ratio": separate / stacked, "epochs": epochs}


def raw_population(x, y, ps, epochs: int, batch_size: int = 100) -> tuple[float, int]:
    """The ceiling: the 50-replica MNIST-1D MLP (40-100-100-10, ReLU, dropout after each hidden layer at
    replica i's rate ps[i]) as hand-written baddbmm calls, fused Adam, each replica its own batch order.
    Returns (training seconds, seed-steps)."""
    import torch
    import torch.nn.functional as F

    S, n = len(ps), len(y)
    g = torch.Generator().manual_seed(0)
    dims = [x.shape[1], 100, 100, 10]
    W = [(torch.randn(S, o, i, generator=g) / i ** 0.5).requires_grad_() for i, o in zip(dims, dims[1:])]
    b = [torch.zeros(S, o, 1, requires_grad=True) for o in dims[1:]]
    opt = torch.optim.Adam(W + b, lr=0.01, fused=True)
    p = torch.tensor(ps).view(S, 1, 1)
    scale = 1 / (1 - p)
    steps = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        orders = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s * 1000 + epoch))
                              for s in range(S)])
        for idx in orders.split(batch_size, dim=1):
            h = x[idx].transpose(1, 2)                     # [S, features, B]: the fast layout on CPU
            yb = y[idx]
            for k in range(3):
                h = torch.baddbmm(b[k], W[k], h)
                if k < 2:
                    h = h.relu() * ((torch.rand_like(h) >= p) * scale)
            loss = F.cross_entropy(h, yb, reduction="none").mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += S
    return time.perf_counter() - t0, steps


def population_vs_raw(epochs: int) -> dict:
    """A population of 50 (seeds 0..9 x dropout p 0.1..0.5) through regbench (app.train_population,
    training loop incl. its per-epoch validation) / the raw loop above, seed-steps per second."""
    import torch
    from omegaconf import OmegaConf

    from conftest import compose
    from regbench.app import train_population
    from regbench.config import validate

    torch.set_num_threads(1)
    ps = [0.1, 0.2, 0.3, 0.4, 0.5]
    cfg = compose(["regularizer=dropout", f"trainer.max_epochs={epochs}", "trainer.progress_every=0",
                   "trainer.threads=1", "logger=csv"])
    cfgs = [OmegaConf.merge(cfg, {"seed": s, "regularizer": {"dropout": {"p": p}}}) for p in ps for s in range(10)]
    rcs = [validate(c) for c in cfgs]
    with tempfile.TemporaryDirectory() as d:
        dirs = [Path(d) / str(i) for i in range(len(cfgs))]
        for q in dirs:
            q.mkdir()
        recs = train_population(cfgs, rcs, dirs, label="bench")
    ours = sum(r["steps"] for r in recs) / recs[0]["extra"]["population_train_seconds"]
    from regbench.data import build_data

    data = build_data("mnist1d", **{k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"})
    raw_s, raw_steps = raw_population(data.x_train, data.y_train, [p for p in ps for _ in range(10)], epochs)
    raw = raw_steps / raw_s
    return {"ours": ours, "raw": raw, "ratio": ours / raw, "epochs": epochs}


def rows_vs_vmap(epochs: int, repeats: int) -> dict:
    """The fast path's measured benefit: 10 seeds of the dropout MLP (p=0.5) trained by the engine
    (engine/fit.py's plain driver, per-epoch validation included) in rows mode and under vmap, and
    the raw batched-matmul loop of the same 10 replicas; seed-steps per second, interleaved repeats."""
    import torch

    from conftest import compose
    from regbench.app import network_of, regularization_of
    from regbench.config import validate
    from regbench.data import build_data
    from regbench.engine.fit import Replica, fit

    torch.set_num_threads(1)
    cfg = compose(["regularizer=dropout", f"trainer.max_epochs={epochs}"])
    rc = validate(cfg)
    reg = regularization_of(rc)
    data = build_data("mnist1d", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, generator_seed=rc.data.generator_seed)
    seeds = range(10)
    times: dict[str, list[float]] = {"rows": [], "vmap": [], "raw": []}
    for _ in range(repeats):
        for mode in ("rows", "vmap"):
            nets = []
            for s in seeds:
                torch.manual_seed(s)
                nets.append(network_of(rc, data, reg, [k for k in cfg.model if k != "name"]))
            recs, _, _ = fit(nets, [Replica(seed=s, reg=reg, lr=rc.optim.lr) for s in seeds], data,
                             optim_name="adam", batch_size=rc.optim.batch_size, max_epochs=epochs,
                             eval_batch_size=1000, rows=mode == "rows")
            times[mode].append(recs[0]["extra"]["population_train_seconds"])
        raw_s, raw_steps = raw_population(data.x_train, data.y_train, [0.5] * len(seeds), epochs)
        times["raw"].append(raw_s)
    rate = {k: raw_steps / statistics.median(v) for k, v in times.items()}
    return {**rate, "rows_over_vmap": rate["rows"] / rate["vmap"], "rows_over_raw": rate["rows"] / rate["raw"],
            "epochs": epochs, "steps_per_epoch": raw_steps // (len(seeds) * epochs)}


LOOP_SETTINGS = {  # model: (replicas, epochs, data overrides); seed_cnn: ~75 ms a seed-step, so few steps
    "cnn1d": (10, 3, ["data=mnist1d"]),
    "seed_cnn": (4, 2, ["data=mnist5k", "data.resize=[14,14]", "data.train_size=1000"]),
}


def loop_vs_vmap(repeats: int) -> dict:
    """Conv models' populations: loop mode (each replica's convolutions its own calls) against vmap
    (one grouped convolution) and against separate runs (populations of one), seed-steps per second
    of the engine's training loop (engine/fit.py's plain driver, per-epoch validation included),
    `dropout` arm, interleaved repeats."""
    import torch

    from conftest import compose
    from regbench.app import network_of, regularization_of
    from regbench.config import validate
    from regbench.data import build_data
    from regbench.engine.fit import Replica, fit

    torch.set_num_threads(1)
    out = {}
    for model, (S, epochs, over) in LOOP_SETTINGS.items():
        cfg = compose([f"model={model}", "regularizer=dropout", f"trainer.max_epochs={epochs}", *over])
        rc = validate(cfg)
        reg = regularization_of(rc)
        data = build_data(rc.data.name, **{k: getattr(rc.data, k) for k in cfg.data if k != "name"})
        times: dict[str, list[float]] = {"loop": [], "vmap": [], "separate": []}
        seed_steps = 0
        for _ in range(repeats):
            for mode in times:
                groups = [[s] for s in range(S)] if mode == "separate" else [list(range(S))]
                total, seed_steps = 0.0, 0
                for seeds in groups:
                    nets = []
                    for s in seeds:
                        torch.manual_seed(s)
                        nets.append(network_of(rc, data, reg, [k for k in cfg.model if k != "name"]))
                    recs, pop, _ = fit(nets, [Replica(seed=s, reg=reg, lr=1e-3) for s in seeds], data,
                                       optim_name="adam", batch_size=rc.optim.batch_size, max_epochs=epochs,
                                       eval_batch_size=1000, loop=mode == "loop")
                    total += recs[0]["train_seconds"] * len(seeds)
                    seed_steps += sum(r["steps"] for r in recs)
                times[mode].append(total)
        rate = {k: seed_steps / statistics.median(v) for k, v in times.items()}
        out[model] = {**rate, "replicas": S, "epochs": epochs, "loop_over_vmap": rate["loop"] / rate["vmap"],
                      "loop_over_separate": rate["loop"] / rate["separate"]}
    return out


def trials_stacked(epochs: int, repeats: int) -> dict:
    """protocol=tuned's stacked trials: 10 trials x 3 seeds of the dropout MLP, each trial its own
    (lr, p) drawn as TPE's start-up trials draw them (log-uniform lr in [1e-4, 3e-2], uniform p in
    [0.05, 0.8]), trained as one population of 30 and as 10 populations of 3 (one trial at a time);
    seed-steps per second of the engine's training loop, interleaved repeats."""
    import random

    import torch

    from conftest import compose
    from regbench.app import network_of, regularization_of
    from regbench.config import validate
    from regbench.data import build_data
    from regbench.engine.fit import Replica, fit

    torch.set_num_threads(1)
    rc = validate(compose(["regularizer=dropout", f"trainer.max_epochs={epochs}"]))
    data = build_data("mnist1d", root=rc.data.root, val_size=rc.data.val_size, split_seed=rc.data.split_seed,
                      train_size=None, generator_seed=rc.data.generator_seed)
    rng = random.Random(0)
    trials = [(10 ** rng.uniform(-4, math.log10(3e-2)), rng.uniform(0.05, 0.8)) for _ in range(10)]

    def members(trial_list):
        nets, reps = [], []
        for lr, p in trial_list:
            r = dataclasses.replace(rc.regularizer, dropout=dataclasses.replace(rc.regularizer.dropout, p=p))
            reg = regularization_of(dataclasses.replace(rc, regularizer=r))
            for seed in range(3):
                torch.manual_seed(seed)
                nets.append(network_of(rc, data, reg, ["hidden", "depth"]))
                reps.append(Replica(seed=seed, reg=reg, lr=lr, label=f"{lr}/{p}/{seed}"))
        return nets, reps

    times: dict[str, list[float]] = {"together": [], "one_at_a_time": []}
    seed_steps = 0
    for _ in range(repeats):
        for mode in times:
            total, seed_steps = 0.0, 0
            for group in ([trials] if mode == "together" else [[t] for t in trials]):
                nets, reps = members(group)
                recs, _, _ = fit(nets, reps, data, optim_name="adam", batch_size=rc.optim.batch_size,
                                 max_epochs=epochs, eval_batch_size=1000)
                total += recs[0]["extra"]["population_train_seconds"]
                seed_steps += sum(r["steps"] for r in recs)
            times[mode].append(total)
    rate = {k: seed_steps / statistics.median(v) for k, v in times.items()}
    return {**rate, "ratio": rate["together"] / rate["one_at_a_time"], "epochs": epochs}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0, p


def sweep_speedup(epochs: int) -> dict:
    """2 arms x 4 seeds: one after another in one process (hydra/launcher=basic), in 2 joblib workers,
    and with the default launcher, which stacks each arm's 4 seeds into one population."""
    sweep = ["-m", "regularizer=none,dropout", "seed=0,1,2,3", f"trainer.max_epochs={epochs}",
             "trainer.progress_every=0", "trainer.threads=1", "~hydra.callbacks.report"]
    out = {}
    for label, launcher in (("sequential", ["hydra/launcher=basic"]),
                            ("joblib", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
                            ("stacked", [])):
        with tempfile.TemporaryDirectory() as d:
            out[label], _ = timed([sys.executable, "run.py", *sweep, *launcher, f"runs_root={d}"])
    out["speedup"] = out["sequential"] / out["joblib"]
    out["stacked_speedup"] = out["sequential"] / out["stacked"]
    return out


def startup() -> dict:
    help_s, _ = timed([sys.executable, "run.py", "--help"])
    with tempfile.TemporaryDirectory() as d:
        one_s, _ = timed([sys.executable, "run.py", "trainer.max_epochs=1", f"runs_root={d}"])
        rec = json.loads(next(Path(d).rglob("results.json")).read_text())
    return {"help_seconds": help_s, "one_epoch_run_seconds": one_s, "imports_seconds": rec["extra"]["import_seconds"],
            "setup_seconds": rec["extra"]["setup_seconds"], "train_seconds": rec["train_seconds"]}


GPU_DIR = ROOT / "benchmarks" / "gpu"


def gpu_section() -> list[str]:
    """The GPU figures: not measured by `make bench` (the reference machine has no GPU) but by
    `benchmarks/gpu_check.sh` on a lent GPU machine, whose outputs are committed in benchmarks/gpu/;
    quoted here verbatim, with the headline ratio pulled out."""
    scaling, seeds10, study = (GPU_DIR / f"gpu_{n}.md" for n in ("scaling", "seeds10", "study_settings"))
    if not scaling.exists():
        return ["No GPU figures: run `benchmarks/gpu_check.sh` on a GPU machine (see benchmarks/gpu/README.md)."]
    text = scaling.read_text()
    found = re.search(r"S = (\d+) stacked / one separate run, steps/s \(training loop\): \*\*(\d+)x\*\*", text)
    out = ["## GPU (from benchmarks/gpu/, written by `benchmarks/gpu_check.sh`; not rerun by `make bench`)", ""]
    if found:
        out += ["| measure | value | goal |", "|---|---|---|",
                f"| replicas on the GPU: {found.group(1)} stacked / one separate run, steps/s (training loop) | "
                f"{found.group(2)}x | "
                f">= 300x |", ""]
    for f in (scaling, seeds10, study):
        if f.exists():
            body = f.read_text().strip().splitlines()
            out += [f"### {f.name}", "", *[("#" + line if line.startswith("#") else line) for line in body], ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=170, help="epochs of the overhead run (170 = the default run)")
    ap.add_argument("--sweep-epochs", type=int, default=170, help="epochs of each sweep run (170 = the default run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    args = ap.parse_args()

    fw = framework_overhead(args.repeats, args.epochs)
    dc = dropout_cost(args.repeats)
    rp = replica_speedup(args.repeats)
    sc = stacked_commands(args.sweep_epochs)
    pr = population_vs_raw(POPULATION_EPOCHS)
    rv = rows_vs_vmap(POPULATION_EPOCHS, args.repeats)
    lv = loop_vs_vmap(args.repeats)
    ts = trials_stacked(POPULATION_EPOCHS, args.repeats)
    sw = sweep_speedup(args.sweep_epochs)
    st = startup()
    ceiling = sc["separate"] / (st["imports_seconds"] + 10 * rv["steps_per_epoch"] * sc["epochs"] / rv["raw"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, torch threads 1"
    lines = [
        "# regbench benchmark", "",
        f"Machine: {machine}. Command: `make bench` (`python benchmarks/bench.py --repeats {args.repeats}`). "
        "Ratios compare timings taken in the same run; medians of the repeats.", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| framework overhead: regbench / plain PyTorch loop ({fw['steps']} steps, MNIST-1D MLP) | "
        f"{fw['ratio']:.2f}x ({fw['regbench_steps_per_s']:.0f} vs {fw['raw_steps_per_s']:.0f} steps/s) | <= 1.2x |",
        f"| parity: max per-epoch train-loss difference vs the plain loop | {fw['max_loss_diff']:.1e} | < 1e-5 |",
    ]
    if dc:
        lines += [
            f"| dropout step / plain step, regbench Dropout (p=0.5) | {dc['ours']:.2f}x | <= 1.25x |",
            f"| dropout step / plain step, torch.nn.Dropout (p=0.5) | {dc['torch']:.2f}x | (reference) |",
        ]
    if rp:
        lines += [f"| replicas: 10 stacked seeds / 10 separate runs, {REPLICA_EPOCHS} epochs, seed-steps/s, `{arm}` "
                  f"(whole call) | "
                  f"{v['ratio_wall']:.2f}x | |" for arm, v in rp.items()]
    lines += [
        f"| replicas: 10 stacked seeds / 10 separate runs, whole commands, {sc['epochs']} epochs, `dropout`: "
        f"separate {sc['separate']:.1f} s / stacked {sc['stacked']:.1f} s | {sc['ratio']:.2f}x | >= 3.5x |",
        # what no stacking can beat here: the stacked command at the raw loop's rate with no evaluation,
        # no records and only the start-up every command pays
        f"| the same ratio's ceiling on this machine: separate {sc['separate']:.1f} s / (start-up "
        f"{st['imports_seconds']:.2f} s + {10 * rv['steps_per_epoch'] * sc['epochs']} seed-steps at the raw loop's "
        f"{rv['raw']:.0f} seed-steps/s) | {ceiling:.2f}x | |",
        f"| population of 50 (10 seeds x 5 dropout rates) / raw batched-matmul loop, seed-steps/s, "
        f"{pr['epochs']} epochs | {pr['ratio']:.2f}x ({pr['ours']:.0f} vs {pr['raw']:.0f}) | >= 0.8x |",
        f"| rows mode (the fast path) / vmap, population of 10 dropout seeds, seed-steps/s, {rv['epochs']} epochs | "
        f"{rv['rows_over_vmap']:.2f}x ({rv['rows']:.0f} vs {rv['vmap']:.0f}) | |",
        f"| rows mode / raw batched-matmul loop of the same 10 replicas, seed-steps/s | "
        f"{rv['rows_over_raw']:.2f}x ({rv['rows']:.0f} vs {rv['raw']:.0f}) | |",
        *(f"| loop mode / vmap, `{m}` population of {v['replicas']} dropout seeds, seed-steps/s, {v['epochs']} "
          f"epochs | {v['loop_over_vmap']:.2f}x ({v['loop']:.1f} vs {v['vmap']:.1f}) | |" for m, v in lv.items()),
        *(f"| loop mode / {v['replicas']} separate runs, `{m}`, seed-steps/s | {v['loop_over_separate']:.2f}x "
          f"({v['loop']:.1f} vs {v['separate']:.1f}) | |" for m, v in lv.items()),
        f"| tuned study: 10 start-up trials x 3 seeds (each trial its own lr, p) as one population / one trial's "
        f"3 seeds at a time, seed-steps/s, {ts['epochs']} epochs | {ts['ratio']:.2f}x ({ts['together']:.0f} vs "
        f"{ts['one_at_a_time']:.0f}) | |",
        f"| parallel sweep speed-up, 2 arms x 4 seeds x {args.sweep_epochs} epochs: sequential {sw['sequential']:.1f} s"
        f" / joblib (2 jobs x 1 thread) {sw['joblib']:.1f} s | {sw['speedup']:.2f}x | >= 1.7x |",
        f"| stacked sweep speed-up, the same sweep: sequential {sw['sequential']:.1f} s / the default launcher "
        f"(each arm's 4 seeds one population, one process) {sw['stacked']:.1f} s | {sw['stacked_speedup']:.2f}x | |",
        f"| start-up: `python run.py --help` | {st['help_seconds']:.2f} s | |",
        f"| start-up: 1-epoch run, whole command | {st['one_epoch_run_seconds']:.2f} s | |",
        f"| start-up: of which imports and config (Hydra, torch, Lightning), as the run reports it | {st['imports_seconds']:.2f} s | |",
        f"| start-up: of which data and model set-up in the run | {st['setup_seconds']:.2f} s | |",
        "",
    ]
    lines += gpu_section()
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
