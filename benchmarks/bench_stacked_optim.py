"""Per-step cost of engine.optim.StackedOptimizer (per-replica lr / wd) against torch.optim on the
same stacked tensors with one scalar lr, and against the same math written as plain per-tensor ops.

    .venv/bin/python benchmarks/bench_stacked_optim.py [--replicas 50] [--steps 200] [--repeats 7]

Stacked MLP 40 -> 100 -> 100 -> 10 (6 tensors, [S, *shape]), fixed random gradients, one thread.
Prints the median microseconds per optimizer step and the ratio to torch.optim(foreach=True);
the variants are interleaved per repeat, so drifts in machine load hit them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from regbench.engine.optim import StackedOptimizer


def stacked_mlp(S: int) -> dict[str, torch.Tensor]:
    nets = [torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.ReLU(), torch.nn.Linear(100, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10)) for _ in range(S)]
    params, _ = torch.func.stack_module_state(nets)
    for p in params.values():
        p.grad = torch.randn_like(p) * 1e-2
    return params


def plain_adam(params, lr, wd, decay, b1=0.9, b2=0.999, eps=1e-8):
    """The same update and scratch buffers, one Python call per op and tensor (the alternative to
    torch._foreach_*)."""
    state = {n: {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p), "g": torch.empty_like(p),
                 "d": torch.empty_like(p)} for n, p in params.items()}
    lr64 = lr.double()

    @torch.no_grad()
    def step():
        for n, p in params.items():
            s, g = state[n], p.grad
            shape = (-1, *[1] * (p.dim() - 1))
            if n in decay:
                g = torch.addcmul(g, wd.view(shape), p, out=s["g"])
            s["step"] += 1
            s["m"].lerp_(g, 1 - b1)
            s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = torch.sqrt(s["v"], out=s["d"]).div_((1 - b2 ** s["step"]) ** 0.5).add_(eps)
            scaled = torch.mul(s["m"], (-lr64 / (1 - b1 ** s["step"])).float().view(shape), out=s["g"])
            p.addcdiv_(scaled, denom)
    return step


def per_step_us(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    S = a.replicas
    lr, wd, mom = torch.full((S,), 1e-3), torch.full((S,), 1e-4), torch.full((S,), 0.9)
    variants = {}
    for opt in ("adam", "sgd"):
        ps = {k: stacked_mlp(S) for k in ("stacked", "foreach", "single", "fused", "plain")}
        decay = {n for n, p in ps["stacked"].items() if p.dim() > 2}
        variants[opt, "StackedOptimizer"] = StackedOptimizer(ps["stacked"], opt, lr, wd, decay,
                                                             mom if opt == "sgd" else None).step
        for kind in ("foreach", "single", "fused"):
            p = ps[kind]
            groups = [{"params": [p[n] for n in decay], "weight_decay": 1e-4},
                      {"params": [p[n] for n in p if n not in decay], "weight_decay": 0.0}]
            kw = {"foreach": True} if kind == "foreach" else {"foreach": False} if kind == "single" else {"fused": True}
            o = (torch.optim.Adam(groups, lr=1e-3, **kw) if opt == "adam"
                 else torch.optim.SGD(groups, lr=1e-3, momentum=0.9, **kw))
            variants[opt, f"torch.optim {kind}"] = o.step
        if opt == "adam":
            variants[opt, "plain per-tensor ops"] = plain_adam(ps["plain"], lr, wd, decay)
    times = {k: [] for k in variants}
    for _ in range(a.repeats):
        for k, step in variants.items():
            times[k].append(per_step_us(step, a.steps))
    print(f"S={S}, MLP 40-100-100-10 (6 stacked tensors), {a.steps} steps x {a.repeats} repeats, 1 thread")
    for (opt, kind), t in times.items():
        base = statistics.median(times[opt, "torch.optim foreach"])
        print(f"{opt:4s} {kind:22s} {statistics.median(t):8.1f} us/step  {statistics.median(t) / base:5.2f}x foreach")


if __name__ == "__main__":
    main()
