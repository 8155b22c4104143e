"""Mechanism measurements: what a regularizer did to a trained network, measured on the test set.

    measure(net, x_test, y_test, chunk=1000, probs=None) -> dict   (JSON-serialisable)

One eval-mode forward pass over the test set (in chunks of `chunk` examples, no gradients, MC
dropout switched off for the pass), with forward hooks on the network's hidden activation modules
(`nn.ReLU` / `nn.SELU`: every regbench model builds its activations as separate modules, see
`regbench.models.slots`; logistic regression has none, so its `layers` list is empty). For each
activation *call* in the forward pass, in call order (a module called twice is two layers, named
`name#0`, `name#1`):

    sparsity          fraction of the activation's outputs (all examples x units x positions) that
                      are exactly 0 for ReLU; SELU has no exact zeros, so for SELU it is the
                      fraction <= 0 (`sparsity_rule` says which).
    dead_units        units (channels for conv layers) that are inactive (the same rule) on every
                      test example and position.
    mean_abs_corr     mean |Pearson correlation| over all pairs of units, each unit a vector over
                      the test examples: a proxy of co-adaptation (Hinton et al. 2012; Srivastava
                      et al. 2014, section 7.1). Units that are constant over the test set (max ==
                      min; dead ReLUs among them) have no correlation and are left out
                      (`corr_units_excluded`); None when fewer than 2 units remain. For conv layers
                      ([N, C, *spatial] outputs) each channel is first averaged over its spatial
                      positions, so the channels (not channel x position) are the units
                      (`corr_basis`): the position-wise values of one channel are strongly
                      correlated by construction and would swamp the between-channel statistic.
    feeding_layer     the last module with a >=2-D `weight` (Linear, Conv, DropConnectLinear, ...)
                      that ran before the activation in the forward pass; `feeding_direct` is True
                      when the activation's input is that module's output tensor itself.
    weight_fro_norm   Frobenius norm of the feeding layer's weight;
    unit_norm_mean / unit_norm_max   mean / max over output units (channels) of the L2 norm of
                      each unit's incoming weights (a row of W; a whole kernel for convs), the
                      quantity a max-norm constraint bounds.

and for the predictions (softmax of the same pass, or the given `probs`, e.g. the MC-dropout
average of T stochastic passes):

    acc, nll          accuracy and mean negative log-likelihood (natural log);
    ece               expected calibration error with 15 equal-width confidence bins, the standard
                      estimator of Guo et al. (2017): sum_b |B_b|/n * |acc(B_b) - conf(B_b)| with
                      bins (k/15, (k+1)/15] over the top-class probability (`reliability` holds the
                      per-bin counts, accuracies and confidences);
    mean_confidence   mean top-class probability;
    entropy           mean predictive entropy -sum_k p_k log p_k (nats).

`summary` averages sparsity, mean_abs_corr and unit_norm_mean over the layers (unweighted; None
without layers / values). Everything is computed in float64 on the CPU from one deterministic
pass: the same network and data give the same dict. Undefined values are None, never NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regbench.analysis.predictions import encode as encode_predictions

MECHANISM_VERSION = 1
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.SELU)
ECE_BINS = 15


def _rule(module: nn.Module) -> str:
    return "<= 0 (SELU has no exact zeros)" if isinstance(module, nn.SELU) else "== 0"


def _inactive(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return out <= 0 if isinstance(module, nn.SELU) else out == 0


@dataclass
class _Layer:
    name: str
    activation: str
    sparsity_rule: str
    shape: tuple[int, ...]            # per-example output shape
    feeding: str | None
    feeding_direct: bool
    inactive: int = 0
    total: int = 0
    active_per_unit: torch.Tensor | None = None   # int64 [U]
    summaries: list[torch.Tensor] = field(default_factory=list)  # float64 [n, U] per chunk


def _value(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def mean_abs_correlation(x: torch.Tensor) -> tuple[float | None, int, int]:
    """(mean |Pearson r| over all pairs of non-constant columns, columns used, columns excluded).

    `x` is [observations, units]; a column is constant when its max equals its min. The mean is
    None when fewer than 2 columns (or fewer than 2 observations) remain.
    """
    x = x.to(torch.float64)
    if x.shape[0] < 2:
        return None, 0, int(x.shape[1])
    keep = (x.max(0).values - x.min(0).values) > 0
    used, excluded = int(keep.sum()), int((~keep).sum())
    if used < 2:
        return None, used, excluded
    xc = x[:, keep] - x[:, keep].mean(0)
    xc = xc / xc.norm(dim=0)
    r = (xc.T @ xc).clamp(-1.0, 1.0)
    iu = torch.triu_indices(used, used, offset=1)
    return _value(r[iu[0], iu[1]].abs().mean()), used, excluded


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = ECE_BINS) -> tuple[float, dict[str, list]]:
    """ECE of Guo et al. (2017) with `n_bins` equal-width bins (k/n_bins, (k+1)/n_bins] over the
    top-class probability; returns (ece, {"bin_upper", "count", "accuracy", "confidence"})."""
    probs = torch.as_tensor(probs, dtype=torch.float64).cpu()
    labels = torch.as_tensor(labels).cpu()
    conf, pred = probs.max(1)
    correct = (pred == labels).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    n = len(labels)
    ece = 0.0
    bins: dict[str, list] = {"bin_upper": [], "count": [], "accuracy": [], "confidence": []}
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        k = int(in_bin.sum())
        bins["bin_upper"].append(float(hi))
        bins["count"].append(k)
        if k == 0:
            bins["accuracy"].append(None)
            bins["confidence"].append(None)
            continue
        acc, c = float(correct[in_bin].mean()), float(conf[in_bin].mean())
        bins["accuracy"].append(acc)
        bins["confidence"].append(c)
        ece += k / n * abs(acc - c)
    return ece, bins


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-example entropy -sum_k p_k log p_k in nats (0 log 0 = 0)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    return -torch.special.xlogy(probs, probs).sum(1)


@torch.no_grad()
def predict_probs(net: nn.Module, x: torch.Tensor, chunk: int = 1000, mc_samples: int = 0) -> torch.Tensor:
    """Softmax predictions [N, K] (float64, CPU) in eval mode; with `mc_samples` > 0 the mean softmax
    of that many passes with the regbench dropout layers kept on (MC dropout, Gal & Ghahramani 2016).
    MC passes draw from the global torch generator."""
    from regbench.regularizers.layers import set_mc_dropout

    was_training = net.training
    net.eval()
    if mc_samples and set_mc_dropout(net, True) == 0:
        raise ValueError("mc_samples > 0 but the network has no regbench dropout layer to keep on at test time")
    try:
        out = []
        for xb in x.split(chunk):
            if mc_samples:
                p = torch.stack([F.softmax(net(xb).double(), 1) for _ in range(mc_samples)]).mean(0)
            else:
                p = F.softmax(net(xb).double(), 1)
            out.append(p.cpu())
        return torch.cat(out)
    finally:
        if mc_samples:
            set_mc_dropout(net, False)
        net.train(was_training)


def _weighted_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in net.named_modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            out.append((name, m))
    return out


@torch.no_grad()
def measure(net: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, chunk: int = 1000,
            probs: torch.Tensor | None = None) -> dict[str, Any]:
    """Hidden-layer sparsity, co-adaptation proxy and weight norms, and calibration, on the test set.

    See the module docstring for every quantity. `probs` ([N, K] class probabilities, e.g. the
    MC-dropout average) replaces the softmax of the eval-mode pass for the prediction metrics; the
    hidden-layer statistics always come from the deterministic eval-mode pass.
    """
    from regbench.regularizers.layers import dropout_layers

    n = len(y_test)
    if len(x_test) != n:
        raise ValueError(f"x_test has {len(x_test)} examples but y_test has {n}")
    if n == 0:
        raise ValueError("measure needs at least one test example")
    if probs is not None:
        probs = torch.as_tensor(probs).to("cpu", torch.float64)
        if probs.dim() != 2 or probs.shape[0] != n:
            raise ValueError(f"probs must be [N={n}, classes], got shape {tuple(probs.shape)}")
        if not torch.allclose(probs.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-4):
            raise ValueError("probs must be class probabilities (rows summing to 1)")

    names = {m: name for name, m in net.named_modules()}
    layers: dict[tuple[str, int], _Layer] = {}
    state: dict[str, Any] = {"last": None, "calls": Counter()}

    def on_weighted(module, _inp, out):
        state["last"] = (names[module], out)

    def on_activation(module, inp, out):
        name = names[module]
        key = (name, state["calls"][name])
        state["calls"][name] += 1
        out = out.detach()
        layer = layers.get(key)
        if layer is None:
            last = state["last"]
            layer = layers[key] = _Layer(
                name=name, activation=type(module).__name__, sparsity_rule=_rule(module),
                shape=tuple(out.shape[1:]), feeding=last[0] if last else None,
                feeding_direct=bool(last is not None and inp and inp[0] is last[1]))
        inactive = _inactive(module, out)
        layer.inactive += int(inactive.sum())
        layer.total += inactive.numel()
        active = (~inactive).reshape(out.shape[0], out.shape[1], -1).sum((0, 2)).cpu()
        layer.active_per_unit = active if layer.active_per_unit is None else layer.active_per_unit + active
        summary = out.to(torch.float64)
        if summary.dim() > 2:  # conv: channels, each averaged over its positions
            summary = summary.flatten(2).mean(2)
        layer.summaries.append(summary.reshape(out.shape[0], -1).cpu())

    mc_flags = [(layer, layer.mc) for layer in dropout_layers(net)]
    was_training = net.training
    hooks = [m.register_forward_hook(on_activation) for m in net.modules() if isinstance(m, ACTIVATIONS)]
    hooks += [m.register_forward_hook(on_weighted) for _, m in _weighted_modules(net)]
    net.eval()
    for layer, _ in mc_flags:
        layer.mc = False
    try:
        outs = []
        for xb in x_test.split(chunk):
            state["last"], state["calls"] = None, Counter()
            logits = net(xb)
            if probs is None:
                outs.append(F.softmax(logits.to(torch.float64), 1).cpu())
    finally:
        for h in hooks:
            h.remove()
        for layer, flag in mc_flags:
            layer.mc = flag
        net.train(was_training)
    p = probs if probs is not None else torch.cat(outs)
    y = torch.as_tensor(y_test).cpu().long()

    modules = dict(net.named_modules())
    calls = Counter(name for name, _ in layers)
    out_layers = []
    for (name, i), layer in layers.items():  # dicts keep insertion order: the first pass's call order
        corr, used, excluded = mean_abs_correlation(torch.cat(layer.summaries))
        entry: dict[str, Any] = {
            "name": name if calls[name] == 1 else f"{name}#{i}",
            "activation": layer.activation,
            "kind": "conv" if len(layer.shape) > 1 else "dense",
            "shape": list(layer.shape),
            "units": int(layer.shape[0]) if layer.shape else 1,
            "sparsity": layer.inactive / layer.total if layer.total else None,
            "sparsity_rule": layer.sparsity_rule,
            "dead_units": int((layer.active_per_unit == 0).sum()),
            "mean_abs_corr": corr,
            "corr_basis": "channels (spatially averaged)" if len(layer.shape) > 1 else "units",
            "corr_units_used": used,
            "corr_units_excluded": excluded,
            "feeding_layer": layer.feeding,
            "feeding_direct": layer.feeding_direct,
            "feeding_layer_type": None,
            "weight_fro_norm": None, "unit_norm_mean": None, "unit_norm_max": None,
        }
        if layer.feeding is not None:
            w = modules[layer.feeding].weight.detach().to("cpu", torch.float64)
            rows = w.reshape(w.shape[0], -1).norm(dim=1)
            entry.update(feeding_layer_type=type(modules[layer.feeding]).__name__,
                         weight_fro_norm=_value(w.norm()), unit_norm_mean=_value(rows.mean()),
                         unit_norm_max=_value(rows.max()))
        out_layers.append(entry)

    ece, bins = expected_calibration_error(p, y)
    conf, pred = p.max(1)
    nll = -torch.log(p[torch.arange(n), y].clamp_min(1e-300)).mean()
    return {
        "version": MECHANISM_VERSION,
        "n_test": n,
        "num_classes": int(p.shape[1]),
        "test_predictions": encode_predictions(pred, y),  # per example, for McNemar / paired bootstraps
        "prediction": "given probabilities" if probs is not None else "softmax of one eval-mode pass",
        "acc": _value((pred == y).to(torch.float64).mean()),
        "nll": _value(nll),
        "ece": _value(ece),
        "ece_bins": ECE_BINS,
        "mean_confidence": _value(conf.mean()),
        "entropy": _value(predictive_entropy(p).mean()),
        "reliability": bins,
        "layers": out_layers,
        "summary": {
            "layers": len(out_layers),
            "sparsity": _mean([e["sparsity"] for e in out_layers]),
            "mean_abs_corr": _mean([e["mean_abs_corr"] for e in out_layers]),
            "unit_norm_mean": _mean([e["unit_norm_mean"] for e in out_layers]),
            "dead_units": sum(e["dead_units"] for e in out_layers),
        },
    }
