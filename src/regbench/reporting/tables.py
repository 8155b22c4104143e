"""The three comparison tables as DataFrames of raw numbers (formatting lives in render.py).

Row order is fixed: data, model, then the baseline arm first, then arms by name, then config hash.
Only runs with status "ok" enter any statistic; diverged and failed runs are counted per arm.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from regbench.reporting import stats
from regbench.reporting.collect import config_differences


def tag(metric: str) -> str:
    """Column prefix of a metric: "test/acc" -> "test_acc"."""
    return metric.replace("/", "_")


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric


def ordered_arms(runs: pd.DataFrame, baseline: str):
    """(data, model, arm, group_hash) groups in table order, each with its runs."""
    keys = runs[["data", "model", "arm", "group_hash", "regularizer"]].drop_duplicates()
    keys = sorted(map(tuple, keys.to_numpy()),
                  key=lambda k: (k[0], k[1], k[4] != baseline, k[2], k[3]))
    for data, model, arm, gh, _ in keys:
        sel = ((runs["data"] == data) & (runs["model"] == model) & (runs["arm"] == arm)
               & (runs["group_hash"] == gh))
        yield (data, model, arm, gh), runs[sel]


def _mean(x) -> float:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def per_arm_table(runs: pd.DataFrame, metric: str = "test/acc", baseline: str = "none") -> pd.DataFrame:
    t = tag(metric)
    config_notes = config_differences(runs)
    rows = []
    for key, g in ordered_arms(runs, baseline):
        ok = g[g["status"] == "ok"]
        vals = ok[metric].dropna().to_numpy(float)
        lo, hi = stats.bootstrap_mean_ci(vals)
        counts = {s: int((g["status"] == s).sum()) for s in ("ok", "diverged", "failed")}
        row = {
            "data": key[0], "model": key[1], "regularizer": key[2], "config": key[3],
            "seeds_ok": counts["ok"], "seeds_diverged": counts["diverged"], "seeds_failed": counts["failed"],
            f"{t}_mean": _mean(vals),
            f"{t}_std": float(np.std(vals, ddof=1)) if vals.size >= 2 else math.nan,
            f"{t}_iqm": stats.iqm(vals),
            f"{t}_ci95_low": lo, f"{t}_ci95_high": hi,
        }
        if metric != "test/loss":
            row["test_loss_mean"] = _mean(ok["test/loss"])
        row["train_minus_test_acc_mean"] = _mean(ok["train/acc"] - ok["test/acc"])
        row["best_epoch_mean"] = _mean(ok["best_epoch"])
        row["epochs_trained_mean"] = _mean(ok["epochs_trained"])
        row["train_seconds_mean"] = _mean(ok["train_seconds"])

        notes = []
        if vals.size == 0:
            notes.append("no CI: no ok run with a value")
        elif vals.size == 1:
            notes.append("no CI: only 1 ok run (a CI needs at least 2)")
        if len(ok) > vals.size:
            notes.append(f"{len(ok) - vals.size} ok run(s) without {metric}")
        excluded = [f"{counts[s]} {s}" for s in ("diverged", "failed") if counts[s]]
        if excluded:
            notes.append("excluded from statistics: " + ", ".join(excluded))
        if key in config_notes:
            notes.append(config_notes[key])
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


def _by_seed(g: pd.DataFrame, metric: str) -> dict:
    """{seed: value} of a group's ok runs (runs without a seed are keyed by path: never paired)."""
    ok = g[(g["status"] == "ok") & g[metric].notna()]
    keys = [s if s is not None and not (isinstance(s, float) and math.isnan(s)) else p
            for s, p in zip(ok["seed"], ok["path"])]
    return pd.Series(ok[metric].to_numpy(float), index=keys).groupby(level=0).mean().to_dict()


def pairwise_table(runs: pd.DataFrame, metric: str = "test/acc",
                   baseline: str = "none") -> tuple[pd.DataFrame, list[str]]:
    """Each arm against the baseline arm of the same (data, model, group_hash); returns (table, notes)."""
    t, hib = tag(metric), higher_is_better(metric)
    rows, notes = [], []
    contexts = sorted(set(map(tuple, runs[["data", "model", "group_hash"]].to_numpy())))
    arms = list(ordered_arms(runs, baseline))
    for data, model, gh in contexts:
        here = [(k, g) for k, g in arms if (k[0], k[1], k[3]) == (data, model, gh)]
        bases = [(k, g) for k, g in here if (g["regularizer"] == baseline).all()]
        if len(bases) != 1:
            why = "no" if not bases else f"{len(bases)} differently configured"
            if len(here) > len(bases):
                notes.append(f"{data}/{model} config {gh}: {why} '{baseline}' arm, so no comparisons there")
            continue
        (bkey, bg), = bases
        base = _by_seed(bg, metric)
        for key, g in here:
            if key == bkey:
                continue
            arm = _by_seed(g, metric)
            c = stats.compare(arm, base, higher_is_better=hib)
            if c["paired"]:
                pairing = f"paired on {c['n_shared']} shared seeds"
            else:
                pairing = f"unpaired ({c['n_shared']} shared seed{'s' if c['n_shared'] != 1 else ''})"
            rows.append({
                "data": data, "model": model, "config": gh, "regularizer": key[2], "baseline": baseline,
                "pairing": pairing, "n_arm": c["n_arm"], "n_baseline": c["n_baseline"],
                f"{t}_diff_mean": c["diff_mean"], "diff_ci95_low": c["ci_low"], "diff_ci95_high": c["ci_high"],
                "p_welch": c["p_welch"], "p_paired_t": c["p_paired_t"], "p_wilcoxon": c["p_wilcoxon"],
                "_p_verdict": c["p_verdict"], "prob_improvement": c["prob_improvement"],
            })
    columns = ["data", "model", "config", "regularizer", "baseline", "pairing", "n_arm", "n_baseline",
               f"{t}_diff_mean", "diff_ci95_low", "diff_ci95_high", "p_welch", "p_paired_t",
               "p_wilcoxon", "p_holm", "prob_improvement", "verdict"]
    df = pd.DataFrame(rows, columns=columns + ["_p_verdict"])
    df["p_holm"] = stats.holm(df["_p_verdict"].to_numpy(float))
    df["verdict"] = [
        "not testable (<2 ok runs)" if min(na, nb) < 2 else stats.verdict(d, p, hib)
        for na, nb, d, p in zip(df["n_arm"], df["n_baseline"], df[f"{t}_diff_mean"], df["p_holm"])
    ]
    return df[columns], notes


def ranking_table(per_arm: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame | None:
    """Rank of each arm's mean within each (data, model, config) (1 = best), and the mean rank.

    Only contexts with at least two arms with a mean are ranked; None when fewer than two such contexts.
    """
    t = tag(metric)
    pa = per_arm[per_arm[f"{t}_mean"].notna()]
    if pa.empty:  # no arm has a mean (every run failed): nothing to rank
        return None
    sizes = pa.groupby(["data", "model", "config"]).size()
    pa = pa[[sizes[tuple(k)] >= 2 for k in pa[["data", "model", "config"]].to_numpy()]]
    contexts = sorted(set(map(tuple, pa[["data", "model", "config"]].to_numpy())))
    if len(contexts) < 2:
        return None
    several = pa.groupby(["data", "model"])["config"].nunique()
    ranks: dict[str, dict[str, float]] = {}
    labels = []
    for data, model, cfg in contexts:
        label = f"rank {data}/{model}" + (f" [{cfg}]" if several[(data, model)] > 1 else "")
        labels.append(label)
        c = pa[(pa["data"] == data) & (pa["model"] == model) & (pa["config"] == cfg)]
        score = c[f"{t}_mean"].to_numpy(float)
        r = sps.rankdata(-score if higher_is_better(metric) else score, method="average")
        for arm, rank in zip(c["regularizer"], r):
            ranks.setdefault(arm, {})[label] = float(rank)
    df = pd.DataFrame.from_dict(ranks, orient="index").reindex(columns=labels)
    df.insert(0, "regularizer", df.index)
    df["mean_rank"] = df[labels].mean(axis=1)
    df["contexts_ranked"] = df[labels].notna().sum(axis=1).astype(int)
    return df.sort_values(["mean_rank", "regularizer"], kind="stable").reset_index(drop=True)
