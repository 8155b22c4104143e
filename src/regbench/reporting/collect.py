"""Read results.json records into one DataFrame row per run, and decide which runs form an arm.

An arm is (data, model, regularizer, group_hash) -- the pooling key the record writer computes --
split further when runs of one regularizer name carry different regularizer settings (e.g. a sweep
over dropout p: group_hash leaves the regularizer out, so those runs would otherwise pool). Such
arms are labelled with the settings that differ, e.g. ``dropout (dropout.p=0.1)``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from regbench.records import METRIC_KEYS, find_records, read_record
from regbench.reporting.columns import run_columns

log = logging.getLogger(__name__)

MISSING = "?"  # shown for a record without data / model / regularizer / group_hash
ARM_KEYS = ["data", "model", "arm", "group_hash"]


@dataclass
class Loaded:
    runs: pd.DataFrame                      # one row per readable record
    found: int                              # results.json files found
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable: (path, reason)


def _num(v: Any) -> float:
    """A float, NaN for null; raises for anything that is not a number."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def _row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    row = {
        "path": str(path), "status": record["status"], "seed": record.get("seed"),
        **{k: str(record.get(k)) if record.get(k) is not None else MISSING
           for k in ("data", "model", "regularizer", "group_hash")},
        **{k: _num(metrics.get(k)) for k in METRIC_KEYS},
        **{k: _num(record.get(k)) for k in ("best_epoch", "epochs_trained", "stopped_epoch",
                                            "train_seconds", "diverged_epoch")},
        "stopped_early": bool(record.get("stopped_early")),
        "history": record.get("history") or {},
        "config": config,
        "reg_settings": json.dumps(config.get("regularizer"), sort_keys=True, default=str),
    }
    row.update(run_columns(record))  # status with the training-health rule applied, n_test, predictions
    return row


def load_runs(paths: list[str | os.PathLike]) -> Loaded:
    """Every results.json at or below `paths`; unreadable ones are skipped with a logged warning."""
    files = find_records(list(paths))
    rows, skipped = [], []
    for f in files:
        try:
            rows.append(_row(read_record(f), f))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            reason = str(e)
            if reason.startswith(str(f)):
                reason = reason[len(str(f)):].lstrip(": ")
            log.warning("skipping unreadable %s: %s", f, reason)
            skipped.append((f, reason))
    runs = pd.DataFrame(rows, columns=list(_row({"status": "ok"}, Path(""))))
    runs["arm"] = arm_labels(runs)
    return Loaded(runs=runs, found=len(files), skipped=skipped)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": json value}."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): json.dumps(d, sort_keys=True, default=str)} if prefix else {}
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):  # an empty dict adds no key: {} and absent are the same settings
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def differing_keys(settings: list[dict[str, str]]) -> list[str]:
    """Flattened keys whose value is not the same in every one of `settings` (missing counts)."""
    keys = sorted(set().union(*settings)) if settings else []
    return [k for k in keys if len({s.get(k, "<absent>") for s in settings}) > 1]


def arm_labels(runs: pd.DataFrame) -> pd.Series:
    """The regularizer name, plus the differing settings when one name has several settings."""
    labels = runs["regularizer"].copy()
    for name, grp in runs.groupby("regularizer", sort=True):
        distinct = sorted(grp["reg_settings"].unique())
        if len(distinct) < 2:
            continue
        flat = {s: flatten(json.loads(s)) for s in distinct}
        keys = [k for k in differing_keys(list(flat.values())) if k != "name"]
        if not keys:
            continue
        for s in distinct:
            desc = ", ".join(f"{k}={_show(flat[s].get(k))}" for k in keys)
            labels.loc[grp.index[grp["reg_settings"] == s]] = f"{name} ({desc})"
    return labels


def _show(v: str | None) -> str:
    return "absent" if v is None else v.strip('"')


def comparable_config(config: dict[str, Any]) -> dict[str, str]:
    """The flattened config minus seed, regularizer and the keys that never change results."""
    from regbench.naming import result_config  # the writer's own definition of "result-changing"

    try:
        d = result_config(copy.deepcopy(config))
    except (AttributeError, TypeError, KeyError):  # an unusual config shape: compare it all
        d = copy.deepcopy(config)
    d.pop("seed", None)
    d.pop("regularizer", None)
    return flatten(d)


def config_differences(runs: pd.DataFrame) -> dict[tuple, str]:
    """For arms sharing (data, model, arm) but not group_hash: which config keys set them apart.

    Keys that vary between the runs of one group (run-specific) are ignored; returns
    {(data, model, arm, group_hash): "a.b=1 (vs 2 in 1234abcd); ..."}.
    """
    notes: dict[tuple, str] = {}
    for (data, model, arm), grp in runs.groupby(["data", "model", "arm"], sort=True):
        hashes = sorted(grp["group_hash"].unique())
        if len(hashes) < 2:
            continue
        per_hash: dict[str, dict[str, str]] = {}
        for h in hashes:
            flats = [comparable_config(c) for c in grp.loc[grp["group_hash"] == h, "config"]]
            constant = {k: v for k, v in flats[0].items() if all(f.get(k) == v for f in flats)}
            per_hash[h] = constant
        keys = differing_keys(list(per_hash.values()))
        for h in hashes:
            others = [o for o in hashes if o != h]
            parts = []
            for k in keys[:6]:
                theirs = "; ".join(f"{_show(per_hash[o].get(k))} in {o}" for o in others)
                parts.append(f"{k}={_show(per_hash[h].get(k))} (vs {theirs})")
            if len(keys) > 6:
                parts.append(f"and {len(keys) - 6} more keys")
            what = ", ".join(parts) if parts else "settings not recorded in config"
            notes[(data, model, arm, h)] = f"not pooled with config {', '.join(others)}: {what}"
    return notes
