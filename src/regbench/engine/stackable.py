"""Which config keys replicas of one population may differ in: those that change no tensor shape
(the engine reads them per replica, see engine/fit.py). Jobs of a sweep whose configs agree on
everything else can be trained as one population (`group_key`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.naming import short_hash

STACKABLE_KEYS = (
    "seed",                                   # initialisation, batch order, masks
    "optim.lr", "optim.momentum",             # a learning-rate / momentum vector [S]
    "regularizer.weight_decay",               # a coupled-L2 vector [S]
    "regularizer.maxnorm",                    # a max-norm bound per replica (none = infinity)
    "regularizer.dropout.p", "regularizer.dropout.input_p", "regularizer.dropout.conv_p",  # rate buffers
    "regularizer.dropout.schedule_gamma", "regularizer.dropout.schedule_until",  # per-replica factors
    "regularizer.early_stop.patience", "regularizer.early_stop.min_delta", "regularizer.early_stop.alpha",
    "regularizer.early_stop.strip", "regularizer.early_stop.strips", "regularizer.early_stop.restore_best",
)
# labels of a run that the engine does not read at all: jobs differing only in them stack too
LABEL_KEYS = ("protocol.trial",)            # a tuning trial's number (protocol=tuned stacks trials)
# not results, or per-replica by construction: they never split a population
_IGNORED = ("hydra", "replicas", "force", "name")


def group_key(cfg: DictConfig | dict[str, Any]) -> str:
    """Equal for two task configs exactly when they differ only in STACKABLE_KEYS (and keys that
    are not results): such jobs may share one population. (Replicas whose layers still differ,
    say input_p 0 against 0.2, which adds a layer, are split again by the engine.)"""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for k in _IGNORED:
        d.pop(k, None)
    for dotted in STACKABLE_KEYS + LABEL_KEYS:
        *path, leaf = dotted.split(".")
        node = d
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return short_hash(d, 12)
