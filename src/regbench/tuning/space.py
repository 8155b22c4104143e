"""Search spaces: where they come from, what they may say, and how a trial's values enter a config.

A space is a tree of ranges under `protocol.tune` (keys relative to the config root: the optimizer
keys every arm shares) and under `regularizer.tune` (keys relative to `regularizer`: the arm's own):

    regularizer:
      tune:
        dropout:
          p: {low: 0.05, high: 0.8}            # float, uniform
        weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}
        early_stop:
          patience: {low: 5, high: 50}         # int: the key's value in the config is an int
        # or {choices: [a, b, c]}; {step: s} for a stepped range

A leaf names a key that must exist in the composed config (its type decides int / float); the range
must be non-empty, inside the key's own allowed range (config.py), and positive when `log`. Every
violation is a ConfigError naming the key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.config import ConfigError, validate
from regbench.naming import _plain, result_config, short_hash

LEAF_KEYS = ("low", "high", "log", "step", "choices")
_ABSENT = object()


@dataclass(frozen=True)
class Param:
    key: str                      # full config path, e.g. regularizer.dropout.p (the Optuna parameter name)
    kind: str                     # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    source: str = ""              # where it was declared, e.g. regularizer.tune.dropout.p

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {list(self.choices)}"
        scale = "log-uniform" if self.log else "uniform"
        return f"{self.key} {scale} [{self.low:g}, {self.high:g}]{' ' + self.kind if self.kind == 'int' else ''}"


def _leaves(node: Any, path: str, source: str) -> list[tuple[str, str, dict]]:
    if not isinstance(node, dict):
        raise ConfigError(f"{source}={node!r}: a search space entry must be a range {{low, high[, log, step]}} "
                          f"or {{choices: [...]}}, or a group of them")
    if any(k in node for k in ("low", "high", "choices")):
        unknown = [k for k in node if k not in LEAF_KEYS]
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}: unknown key in a search range: allowed {', '.join(LEAF_KEYS)}")
        return [(path, source, node)]
    out = []
    for k, v in node.items():
        out += _leaves(v, f"{path}.{k}" if path else str(k), f"{source}.{k}")
    return out


def parse_space(cfg: DictConfig) -> list[Param]:
    """Every tuned key of this job: the protocol's shared ones, then the arm's. Raises ConfigError."""
    plain = _plain(cfg)
    entries = _leaves(plain.get("protocol", {}).get("tune") or {}, "", "protocol.tune")
    entries += _leaves(plain.get("regularizer", {}).get("tune") or {}, "regularizer", "regularizer.tune")
    params, seen = [], set()
    for key, source, spec in entries:
        if key in seen:
            raise ConfigError(f"{source}: {key} is tuned twice (in protocol.tune and regularizer.tune)")
        seen.add(key)
        current = OmegaConf.select(cfg, key, default=_ABSENT)
        if current is _ABSENT or isinstance(current, (DictConfig, dict)) or key.split(".")[0] in ("protocol", "seed",
                                                                                                   "name", "hydra"):
            what = "a group, not a value" if current is not _ABSENT else "no such key in the composed config"
            raise ConfigError(f"{source}: unknown key {key} ({what}; arm regularizer={plain['regularizer']['name']})")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{source}.choices={choices!r}: needs a non-empty list")
            if any(k in spec for k in ("low", "high", "log", "step")):
                raise ConfigError(f"{source}: give either choices or low/high, not both")
            p = Param(key, "categorical", choices=tuple(choices), source=source)
        else:
            for k in ("low", "high"):
                if not isinstance(spec.get(k), (int, float)) or isinstance(spec.get(k), bool):
                    raise ConfigError(f"{source}.{k}={spec.get(k)!r}: a range needs numeric low and high")
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if not low < high:
                raise ConfigError(f"{source}: empty or inverted range [{low}, {high}]: low must be below high")
            if log and low <= 0:
                raise ConfigError(f"{source}.low={low}: a log range needs low > 0")
            kind = "int" if isinstance(current, int) and not isinstance(current, bool) else "float"
            if current is None:
                kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
            if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
                raise ConfigError(f"{source}: {key} is an integer: low and high must be integers, got [{low}, {high}]")
            step = spec.get("step")
            if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
                raise ConfigError(f"{source}.step={step!r}: a step must be > 0 and cannot be combined with log")
            p = Param(key, kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else int(high),
                      log, step, source=source)
        for end in ((p.low, p.high) if p.kind != "categorical" else p.choices):
            try:
                validate(apply(cfg, {key: end}))
            except ConfigError as e:
                raise ConfigError(f"{source}: the value {end!r} is not allowed for {key}: {e}") from None
        params.append(p)
    return params


def apply(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with each tuned key set to its value."""
    out = copy.deepcopy(cfg)
    for key, v in values.items():
        OmegaConf.update(out, key, v, merge=False)
    return out


def suggest(trial, params: list[Param]) -> dict[str, Any]:
    """One value per parameter from an Optuna trial (its sampler decides)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return out


def grid(params: list[Param], n_trials: int) -> dict[str, list]:
    """The grid sampler's points: n = ceil(N^(1/d)) per range (log-spaced for log ranges), so that the
    grid has at least N points; integers are rounded and deduplicated."""
    ranges = [p for p in params if p.kind != "categorical"]
    n = max(2, math.ceil(n_trials ** (1 / max(1, len(ranges))) - 1e-9))
    out: dict[str, list] = {}
    for p in params:
        if p.kind == "categorical":
            out[p.key] = list(p.choices)
            continue
        if p.log:
            pts = [math.exp(math.log(p.low) + (math.log(p.high) - math.log(p.low)) * i / (n - 1)) for i in range(n)]
        else:
            pts = [p.low + (p.high - p.low) * i / (n - 1) for i in range(n)]
        if p.kind == "int":
            pts = sorted({int(round(x)) for x in pts})
        out[p.key] = pts
    return out


def final_group_hash(cfg: DictConfig, params: list[Param]) -> str:
    """The pooling key of every arm's final runs: the base config minus seed, regularizer and the
    shared tuned keys (each arm has its own tuned values of those), plus the protocol's budget. The
    final runs of all arms of one tuned sweep pool into one comparison; never with fixed or tuning runs."""
    d = result_config(cfg)
    for k in ("seed", "regularizer", "replicas"):
        d.pop(k, None)
    for p in params:
        if not p.key.startswith("regularizer."):
            parent = d
            *head, last = p.key.split(".")
            for h in head:
                parent = parent.get(h, {})
            parent.pop(last, None)
    prot = _plain(cfg).get("protocol") or {}
    budget = {k: prot.get(k) for k in ("tune", "trials", "tune_seeds", "metric", "sampler", "sampler_seed")}
    return short_hash({"config": d, "protocol": budget, "role": "final"})
