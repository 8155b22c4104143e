"""Run identity: a run's folder name and its pooling key are derived from its config, never the clock.

    run_id      "<data>-<model>-<regularizer>[-p<p>]-s<seed>-<hash8>": readable parts plus a hash of
                every result-changing key, so rerunning the same config finds the same folder and
                two different configs never share one.
    group_hash  hash of the config minus the seed and the regularizer: runs are pooled in a table
                only when it agrees.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# keys that never change a run's numbers: where it is written, whether to redo it, how chatty it is
# keys that change no number of a run (where it goes, what it logs and shows): not in its id
NON_RESULT_KEYS = ("name", "runs_root", "force", "hydra", "logger")
NON_RESULT_TRAINER_KEYS = ("progress_every", "progress_bar", "eval_batch_size", "checkpoint_every")


def _plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """Resolved plain dict of a config without the Hydra node (resolving it would recurse here)."""
    if isinstance(cfg, DictConfig):
        return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                for k in cfg if k != "hydra"}
    return copy.deepcopy({k: v for k, v in cfg.items() if k != "hydra"})  # callers pop nested keys


def result_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The part of the config that can change a run's numbers."""
    d = _plain(cfg)
    for k in NON_RESULT_KEYS:
        d.pop(k, None)
    trainer = dict(d.get("trainer") or {})
    for k in NON_RESULT_TRAINER_KEYS:
        trainer.pop(k, None)
    if trainer.get("gradient_clip_val") is None:
        trainer.pop("gradient_clip_val", None)  # off, as before the key existed: those runs keep their ids
    d["trainer"] = trainer
    d.get("data", {}).pop("root", None)   # where the cache lives is not what it holds
    if isinstance(d.get("regularizer"), dict):
        d["regularizer"].pop("tune", None)  # a search space changes no run: the values it picked are in the config
    protocol = d.pop("protocol", None)
    if isinstance(protocol, dict) and protocol.get("role"):
        d["protocol_role"] = protocol["role"]  # tuning and final runs of one config are different runs
    if d.get("replicas", 1) == 1:
        d.pop("replicas", None)  # the separate-run engine: its ids stay those of runs made before the key existed
    return d


def short_hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def group_hash(cfg: DictConfig | dict) -> str:
    d = result_config(cfg)
    d.pop("seed", None)
    d.pop("regularizer", None)
    d.pop("replicas", None)  # stacked and separate runs of a seed are the same population: they pool
    return short_hash(d)


def config_hash(cfg: DictConfig | dict) -> str:
    """Hash of every result-changing key (a checkpoint carries it: only the same config resumes it)."""
    return short_hash(result_config(cfg), 16)


def tuning_spec(cfg: DictConfig | dict) -> dict[str, Any]:
    """What decides which trials a study runs: the base config (minus seed), both spaces, the tuning
    seeds, the metric and the sampler. Not the number of trials (a larger N continues the study),
    nor the final seeds."""
    plain = _plain(cfg)
    prot = plain.get("protocol") or {}
    d = result_config(cfg)
    d.pop("seed", None)
    return {"config": d, "arm_space": (plain.get("regularizer") or {}).get("tune"),
            **{k: prot.get(k) for k in ("tune", "tune_seeds", "tune_seed_start", "metric", "sampler",
                                        "sampler_seed", "stack", "stack_trials")}}


def study_name(cfg: DictConfig | dict) -> str:
    """The arm's study: its folder in the sweep folder and its Optuna study name."""
    plain = _plain(cfg)
    parts = ["tuned", str(plain["data"]["name"]), str(plain["model"]["name"]), str(plain["regularizer"]["name"])]
    return "-".join(parts).replace("/", "_") + "-" + short_hash(tuning_spec(cfg))


def run_id(cfg: DictConfig | dict) -> str:
    plain = _plain(cfg)
    protocol = plain.get("protocol") or {}
    if protocol.get("name") == "tuned" and not protocol.get("role"):
        return study_name(cfg)  # the folder of an arm's tuning study
    d = result_config(cfg)
    parts = [str(d["data"]["name"]), str(d["model"]["name"]), str(d["regularizer"]["name"])]
    dropout = d["regularizer"].get("dropout")
    if dropout:  # not yet validated (Hydra names the folder first): a bad p is refused later, not here
        p = dropout["p"]
        parts.append(f"p{p:g}" if isinstance(p, (int, float)) and not isinstance(p, bool) else f"p{p}")
    parts.append(f"s{d['seed']}")
    parts.append(short_hash(d))
    return "-".join(parts).replace("/", "_")


def sweep_dir(runs_root: Any, name: Any) -> str:
    """`<runs_root>/<name>`, checked before Hydra creates it: `name` is one folder name (so nothing is
    written or removed outside runs_root) and runs_root is, or can become, a folder. Bad values end
    the command with status 2 and the key, the value and what is allowed; nothing is created."""
    import sys
    from pathlib import Path

    from regbench.config import ConfigError, check_name

    try:
        check_name(name)
        root = Path(str(runs_root))
        for p in (root / name, root, *root.parents):  # the nearest existing one must be a folder
            if p.exists():
                if not p.is_dir():
                    key = "runs_root" if p != root / name else "name"
                    raise ConfigError(f"{key}={str(runs_root if key == 'runs_root' else name)!r}: {p} "
                                      f"exists and is not a folder: allowed a folder (or a path that can become one)")
                break
    except ConfigError as e:
        print(f"regbench: invalid config: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return str(root / name)


def register_resolvers() -> None:
    """`${regbench_run_id:}` in hydra.run.dir / hydra.sweep.subdir (reads the whole config via _root_);
    `${regbench_sweep_dir:}`, the checked <runs_root>/<name>, in hydra.run.dir / hydra.sweep.dir."""
    if not OmegaConf.has_resolver("regbench_run_id"):
        OmegaConf.register_new_resolver("regbench_run_id", lambda *, _root_: run_id(_root_))
    if not OmegaConf.has_resolver("regbench_sweep_dir"):
        OmegaConf.register_new_resolver("regbench_sweep_dir",
                                        lambda *, _root_: sweep_dir(_root_.runs_root, _root_.name))
