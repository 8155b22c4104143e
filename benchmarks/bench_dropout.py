"""Step-time cost of dropout on the MNIST-1D MLP: torch.nn.Dropout vs regbench's Dropout.

One training step (forward, cross-entropy, backward, Adam) of the MLP 40 -> 100 -> 100 -> 10
(ReLU, batch 100, one torch thread) with dropout after each hidden layer, divided by the
same step without dropout. The variants are timed in the same process, interleaved round
by round (the order rotates each round) so that drifting machine load hits all of them;
the table gives the median over rounds of the per-round step time and of the per-round
ratio to the no-dropout model timed in that round.

    .venv/bin/python benchmarks/bench_dropout.py [--repeats 41] [--steps 50] [--p 0.5 0.1] [--clock cpu]

The default clock is the process's CPU time (``time.process_time``), not wall time: on a
shared machine wall time mostly measures the other jobs.

Target: regbench's Dropout(p=0.5) ratio <= 1.25.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from regbench.regularizers.layers import Dropout, realised_drop_rate


def mlp(drop) -> nn.Sequential:
    torch.manual_seed(0)  # same initial weights for every variant
    return nn.Sequential(
        nn.Linear(40, 100), nn.ReLU(), drop(),
        nn.Linear(100, 100), nn.ReLU(), drop(),
        nn.Linear(100, 10),
    )


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def time_steps(step, n: int, clock) -> float:
    """Mean seconds per step over n steps."""
    t0 = clock()
    for _ in range(n):
        step()
    return (clock() - t0) / n


def rounds(repeats: int, steps_per_round: int, clock_name: str, warmup: int, ps) -> tuple[list, dict, dict]:
    """Interleaved rounds of each variant's steps: (names, step times, ratios to no dropout) per round."""
    torch.set_num_threads(1)
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 40, generator=gen)
    y = torch.randint(0, 10, (100,), generator=gen)

    variants: dict[str, nn.Module] = {"no dropout": mlp(nn.Identity)}
    for p in ps:
        variants[f"torch.nn.Dropout(p={p:g})"] = mlp(lambda p=p: nn.Dropout(p))
        variants[f"regbench Dropout(p={p:g})"] = mlp(lambda p=p: Dropout(p))
    steps = {name: make_step(m, x, y) for name, m in variants.items()}
    names = list(steps)

    torch.manual_seed(0)
    for name in names:
        time_steps(steps[name], warmup, clock)

    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        this_round = {name: time_steps(steps[name], steps_per_round, clock) for name in order}
        for name in names:
            times[name].append(this_round[name])
            ratios[name].append(this_round[name] / this_round["no dropout"])
    return names, times, ratios


def measure(repeats: int = 41, steps: int = 50, p: float = 0.5) -> dict:
    """Median step-time ratios (dropout p / no dropout) for regbench's Dropout and torch.nn.Dropout."""
    _, _, ratios = rounds(repeats, steps, "cpu", 50, [p])
    return {"ours": statistics.median(ratios[f"regbench Dropout(p={p:g})"]),
            "torch": statistics.median(ratios[f"torch.nn.Dropout(p={p:g})"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=41, help="interleaved rounds (median over them)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per variant per round")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (robust to other jobs on a shared machine); wall: perf_counter")
    ap.add_argument("--warmup", type=int, default=50, help="untimed steps per variant before the rounds")
    ap.add_argument("--p", type=float, nargs="+", default=[0.5, 0.1], help="drop rates to compare")
    args = ap.parse_args()
    names, times, ratios = rounds(args.repeats, args.steps, args.clock, args.warmup, args.p)

    print(f"MNIST-1D MLP 40-100-100-10, batch 100, Adam, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread; {args.repeats} rounds x {args.steps} steps, {args.clock} clock, medians\n")
    print("| variant | step (us) | ratio to no dropout | ratio min..max |")
    print("|---|---:|---:|---:|")
    for name in names:
        t = statistics.median(times[name]) * 1e6
        rr = ratios[name]
        print(f"| {name} | {t:.0f} | {statistics.median(rr):.3f} | {min(rr):.3f}..{max(rr):.3f} |")
    realised = ", ".join(f"p={p:g} -> {realised_drop_rate(p):.6f}" for p in args.p)
    print(f"\nregbench realised drop rates: {realised}")


if __name__ == "__main__":
    main()
