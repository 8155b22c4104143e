"""Will a population fit? An estimate from one replica, checked before any replica is built."""

from __future__ import annotations

import math
import os

import torch
from torch import nn


class PopulationMemoryError(MemoryError):
    """The population would not fit in the device's free memory."""


def activation_width(net: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(sum of every leaf module's output size, the widest output or the input), per example,
    measured by one forward pass of one example in training mode."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
             for m in net.modules() if not list(m.children())]
    was = net.training
    try:
        net.train(True)
        with torch.no_grad():
            p = next(net.parameters())
            net(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return sum(sizes), max(sizes + [math.prod(input_shape)])


def estimate_bytes(S: int, *, param_count: int, activation_width: int, widest: int, batch_size: int,
                   n_train: int, eval_chunk: int, optim_name: str = "adam", input_features: int = 0) -> int:
    """A deliberately simple upper-bound-ish estimate of the population's memory, in bytes (float32).

    per replica:
        parameters x (weights + gradient + optimizer state (Adam 2, SGD 1) + final copy + best copy)
        training activations: 4 floats per layer output value per example of the batch (output,
            saved input, noise mask, gradient), plus the gathered input batch
        evaluation activations: 3 floats x ``widest`` x ``eval_chunk``
        the epoch's batch order and predictions: 2 int64 per training example
    The data itself is not counted (one copy, shared by all replicas).
    """
    state = {"adam": 2, "sgd": 1}.get(optim_name, 2)
    per_param = 4 + state
    per_replica = (4 * per_param * param_count
                   + 4 * batch_size * (4 * activation_width + input_features)
                   + 4 * 3 * widest * eval_chunk
                   + 8 * 2 * n_train)
    return int(S * per_replica)


def available_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on CUDA; ``MemAvailable`` of
    /proc/meminfo (else the free physical pages of ``os.sysconf``) on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_memory(S: int, estimate: int, device: torch.device | str, available: int | None = None) -> None:
    """Raise PopulationMemoryError, giving the estimate, when ``estimate`` exceeds the free memory."""
    free = available_bytes(device) if available is None else available
    if estimate > free:
        per = max(1, estimate // S)
        raise PopulationMemoryError(
            f"a population of {S} replicas needs about {estimate / 2**30:.2f} GiB on {device} (estimate: "
            f"{per / 2**20:.2f} MiB per replica, see regbench.engine.memory.estimate_bytes) but only "
            f"{free / 2**30:.2f} GiB is free; sweep at most {max(1, free // per)} compatible runs at once "
            f"(replicas=) or train them separately")


def check(S: int, net: nn.Module, data, *, batch_size: int, optim_name: str, eval_chunk: int,
          available: int | None = None) -> int:
    """Estimate the population of ``S`` replicas of ``net`` on ``data`` and refuse it if it would not
    fit (before training); returns the estimate."""
    width, widest = activation_width(net, tuple(data.input_shape))
    estimate = estimate_bytes(S, param_count=sum(p.numel() for p in net.parameters()), activation_width=width,
                              widest=widest, batch_size=batch_size, n_train=len(data.y_train),
                              eval_chunk=eval_chunk, optim_name=optim_name,
                              input_features=math.prod(data.input_shape))
    check_memory(S, estimate, data.x_train.device, available)
    return estimate
