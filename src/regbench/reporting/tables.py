"""The three comparison tables as DataFrames of raw numbers (formatting lives in render.py).

Row order is fixed: data, model, config, then the arms by score (best first). Only runs with status
"ok" enter any statistic; collapsed, diverged and failed runs are counted per arm.
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


def _collapse_note(key: tuple, g: pd.DataFrame) -> str | None:
    """The warning for an arm that collapsed in more than COLLAPSE_WARN of its runs, naming its seeds."""
    coll = g[g["status"] == "collapsed"]
    if len(g) == 0 or len(coll) / len(g) <= stats.COLLAPSE_WARN:
        return None
    seeds = ", ".join(str(s) for s in sorted(coll["seed"].tolist(), key=str))
    return (f"WARNING: {key[2]} on {key[0]}/{key[1]} collapsed in {len(coll)} of {len(g)} runs, more than "
            f"{stats.COLLAPSE_WARN:.0%} (seeds {seeds}): they are excluded from its statistics")


def per_arm_table(runs: pd.DataFrame, metric: str = "test/acc", baseline: str = "none") -> pd.DataFrame:
    """One row per arm; statistics over its ok runs only. Rows are sorted by the arm's mean within each
    (data, model, config), best first (`rank` 1); collapsed runs are counted and shown separately."""
    t = tag(metric)
    config_notes = config_differences(runs)
    rows = []
    for key, g in ordered_arms(runs, baseline):
        ok = g[g["status"] == "ok"]
        vals = ok[metric].dropna().to_numpy(float)
        lo, hi = stats.t_mean_ci(vals)
        counts = {s: int((g["status"] == s).sum()) for s in ("ok", "collapsed", "diverged", "failed")}
        finished = counts["ok"] + counts["collapsed"]
        c_lo, c_hi = stats.wilson_ci(counts["collapsed"], finished)
        with_collapsed = g[g["status"].isin(["ok", "collapsed"])][metric].dropna().to_numpy(float)
        row = {
            "data": key[0], "model": key[1], "regularizer": key[2], "config": key[3],
            "seeds_ok": counts["ok"], "seeds_collapsed": counts["collapsed"],
            "seeds_diverged": counts["diverged"], "seeds_failed": counts["failed"],
            f"{t}_mean": _mean(vals),
            f"{t}_std": float(np.std(vals, ddof=1)) if vals.size >= 2 else math.nan,
            f"{t}_iqm": stats.iqm(vals),
            f"{t}_ci95_low": lo, f"{t}_ci95_high": hi,
            "collapse_rate": counts["collapsed"] / finished if finished else math.nan,
            "collapse_ci95_low": c_lo, "collapse_ci95_high": c_hi,
            f"{t}_mean_with_collapsed": _mean(with_collapsed) if counts["collapsed"] else _mean(vals),
        }
        if metric == "test/acc":  # binomial SE of one run's accuracy from the finite test set
            se = [stats.test_sampling_se(a, n) for a, n in zip(ok["test/acc"], ok["n_test"])]
            row["test_sampling_se"] = _mean(se)
        if metric != "test/loss":
            row["test_loss_mean"] = _mean(ok["test/loss"])
        row["train_minus_test_acc_mean"] = _mean(ok["train/acc"] - ok["test/acc"])
        row["best_epoch_mean"] = _mean(ok["best_epoch"])
        row["epochs_trained_mean"] = _mean(ok["epochs_trained"])
        row["train_seconds_mean"] = _mean(ok["train_seconds"])
        row["train_seconds_total"] = float(np.nansum(g["train_seconds"].to_numpy(float)))  # every run, any status

        notes = []
        if vals.size == 0:
            notes.append("no CI: no ok run with a value")
        elif vals.size == 1:
            notes.append("no CI: only 1 ok run (a CI needs at least 2)")
        if len(ok) > vals.size:
            notes.append(f"{len(ok) - vals.size} ok run(s) without {metric}")
        excluded = [f"{counts[s]} {s}" for s in ("collapsed", "diverged", "failed") if counts[s]]
        if excluded:
            notes.append("excluded from statistics: " + ", ".join(excluded))
        warn = _collapse_note(key, g)
        if warn:
            notes.append(warn)
        if g["split_per_seed"].any():
            notes.append("validation split drawn per seed (data.split_per_seed)")
        if key in config_notes:
            notes.append(config_notes[key])
        row["note"] = "; ".join(notes)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    score = df[f"{t}_mean"] if higher_is_better(metric) else -df[f"{t}_mean"]
    df["rank"] = score.groupby([df["data"], df["model"], df["config"]]).rank(ascending=False, method="min")
    df = df.assign(_s=-score.fillna(-np.inf)).sort_values(["data", "model", "config", "_s", "regularizer"],
                                                         kind="stable").drop(columns="_s")
    return df.reset_index(drop=True)


def collapse_warnings(per_arm: pd.DataFrame) -> list[str]:
    """The WARNING notes of the per-arm table (arms collapsing in more than COLLAPSE_WARN of runs)."""
    return [part for note in per_arm.get("note", []) for part in str(note).split("; ")
            if part.startswith("WARNING:")]


def _by_seed(g: pd.DataFrame, metric: str) -> dict:
    """{seed: value} of a group's ok runs (runs without a seed are keyed by path: never paired)."""
    ok = g[(g["status"] == "ok") & g[metric].notna()]
    keys = [s if s is not None and not (isinstance(s, float) and math.isnan(s)) else p
            for s, p in zip(ok["seed"], ok["path"])]
    return pd.Series(ok[metric].to_numpy(float), index=keys).groupby(level=0).mean().to_dict()


def _pair_row(data, model, gh, key, base_key, arm, base, hib, margin, t) -> dict:
    c = stats.compare(arm, base, higher_is_better=hib, margin=margin)
    if c["paired"]:
        pairing = f"paired on {c['n_shared']} shared seeds"
    else:
        pairing = f"unpaired ({c['n_shared']} shared seed{'s' if c['n_shared'] != 1 else ''})"
    return {
        "data": data, "model": model, "config": gh, "regularizer": key[2], "baseline": base_key[2],
        "pairing": pairing, "n_arm": c["n_arm"], "n_baseline": c["n_baseline"],
        f"{t}_diff_mean": c["diff_mean"], "diff_ci95_low": c["ci_low"], "diff_ci95_high": c["ci_high"],
        "p_welch": c["p_welch"], "p_paired_t": c["p_paired_t"], "p_wilcoxon": c["p_wilcoxon"],
        "p_tost": c["p_tost"], "_p_verdict": c["p_verdict"], "_paired": c["paired"], "sd_diff": c["sd_diff"],
        "prob_improvement": c["prob_improvement"],
        "prob_improvement_ci95_low": c["prob_improvement_ci_low"],
        "prob_improvement_ci95_high": c["prob_improvement_ci_high"],
    }


PAIRWISE_COLUMNS = ["data", "model", "config", "family", "regularizer", "baseline", "pairing", "n_arm",
                    "n_baseline", "{t}_diff_mean", "diff_ci95_low", "diff_ci95_high", "p_welch", "p_paired_t",
                    "p_wilcoxon", "p_holm", "p_tost", "p_tost_holm", "equivalence_margin", "sd_diff", "mde_dz", "mde_{t}",
                    "prob_improvement", "prob_improvement_ci95_low", "prob_improvement_ci95_high", "verdict"]


def pairwise_table(runs: pd.DataFrame, metric: str = "test/acc", baseline: str = "none",
                   margin: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Each arm against the baseline arm of the same (data, model, group_hash); returns (table, notes).

    Holm families are per setting: the comparisons of one (data, model, config) form one family, so an
    arm added elsewhere changes no p-value here. A setting without the baseline arm compares all pairs
    of its arms (each later arm in table order minus each earlier one), Holm over those pairs.
    Rows are sorted by difference within their family, best first.
    """
    margin = stats.EQUIVALENCE_MARGIN if margin is None else margin
    t, hib = tag(metric), higher_is_better(metric)
    rows, notes = [], []
    contexts = sorted(set(map(tuple, runs[["data", "model", "group_hash"]].to_numpy())))
    arms = list(ordered_arms(runs, baseline))
    for data, model, gh in contexts:
        here = [(k, g) for k, g in arms if (k[0], k[1], k[3]) == (data, model, gh)]
        if len(here) < 2:
            if here and here[0][0][2] != baseline:
                notes.append(f"{data}/{model} config {gh}: only one arm ({here[0][0][2]}), nothing to compare")
            continue
        bases = [(k, g) for k, g in here if (g["regularizer"] == baseline).all()]
        if len(bases) > 1:
            notes.append(f"{data}/{model} config {gh}: {len(bases)} differently configured '{baseline}' arms, "
                         f"so no comparisons there")
            continue
        if bases:
            (bkey, bg), = bases
            pairs = [(k, g, bkey, bg) for k, g in here if k != bkey]
            family = f"{data}/{model} [{gh}]: {len(pairs)} vs {baseline}"
        else:
            pairs = [(k, g, bk, bg) for i, (bk, bg) in enumerate(here) for k, g in here[i + 1:]]
            family = f"{data}/{model} [{gh}]: all {len(pairs)} pairs"
            notes.append(f"{data}/{model} config {gh}: no '{baseline}' arm, so every pair of its arms is "
                         f"compared (later arm minus earlier), Holm over the {len(pairs)} pairs")
        fam_rows = [dict(_pair_row(data, model, gh, k, bk, _by_seed(g, metric), _by_seed(bg, metric), hib,
                                   margin, t), family=family) for k, g, bk, bg in pairs]
        p_holm = stats.holm([r["_p_verdict"] for r in fam_rows])
        p_tost_holm = stats.holm([r["p_tost"] for r in fam_rows])
        m = int(np.sum(~np.isnan([r["_p_verdict"] for r in fam_rows])))
        for r, ph, pt in zip(fam_rows, p_holm, p_tost_holm):
            r["p_holm"], r["p_tost_holm"], r["equivalence_margin"] = float(ph), float(pt), margin
            if min(r["n_arm"], r["n_baseline"]) < 2:
                r["verdict"] = "not testable (<2 ok runs)"
                r["mde_dz"] = math.nan
            else:
                r["verdict"] = stats.outcome(r[f"{t}_diff_mean"], ph, pt, hib)
                # Holm's first step tests at alpha / m: the effect detectable with 80 % power there
                r["mde_dz"] = stats.min_detectable_dz(r["n_arm"], stats.ALPHA / max(m, 1), paired=r["_paired"],
                                                      n_other=r["n_baseline"])
            r[f"mde_{t}"] = r["mde_dz"] * r["sd_diff"]
        sign = 1 if hib else -1
        fam_rows.sort(key=lambda r: (-sign * r[f"{t}_diff_mean"] if r[f"{t}_diff_mean"] == r[f"{t}_diff_mean"]
                                     else math.inf, r["regularizer"]))
        rows += fam_rows
    columns = [c.replace("{t}", t) for c in PAIRWISE_COLUMNS]
    df = pd.DataFrame(rows, columns=columns + ["_p_verdict", "_paired"])
    return df[columns], notes


def ranking_table(per_arm: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame | None:
    """Rank of each arm within each distinct setting (1 = best), and the mean rank over settings.

    A distinct setting is a (data, model) pair: configs of one pair that differ in anything else (e.g.
    the MNIST-1D MLP's training-set-size subsets) are ranked each on their own and the arm's ranks are
    averaged, so every setting counts once however many configs it has. Only configs with at least two
    arms with a mean are ranked; None when fewer than two settings are ranked.
    """
    t = tag(metric)
    pa = per_arm[per_arm[f"{t}_mean"].notna()] if len(per_arm) else per_arm
    if pa.empty:  # no arm has a mean (every run failed): nothing to rank
        return None
    sizes = pa.groupby(["data", "model", "config"]).size()
    pa = pa[[sizes[tuple(k)] >= 2 for k in pa[["data", "model", "config"]].to_numpy()]]
    settings = sorted(set(map(tuple, pa[["data", "model"]].to_numpy())))
    if len(settings) < 2:
        return None
    ranks: dict[str, dict[str, float]] = {}
    labels = []
    for data, model in settings:
        label = f"rank {data}/{model}"
        labels.append(label)
        per_cfg: dict[str, list[float]] = {}
        for cfg in sorted(pa.loc[(pa["data"] == data) & (pa["model"] == model), "config"].unique()):
            c = pa[(pa["data"] == data) & (pa["model"] == model) & (pa["config"] == cfg)]
            score = c[f"{t}_mean"].to_numpy(float)
            r = sps.rankdata(-score if higher_is_better(metric) else score, method="average")
            for arm, rank in zip(c["regularizer"], r):
                per_cfg.setdefault(arm, []).append(float(rank))
        for arm, rs in per_cfg.items():
            ranks.setdefault(arm, {})[label] = float(np.mean(rs))
    df = pd.DataFrame.from_dict(ranks, orient="index").reindex(columns=labels)
    df.insert(0, "regularizer", df.index)
    df["mean_rank"] = df[labels].mean(axis=1)
    df["settings_ranked"] = df[labels].notna().sum(axis=1).astype(int)
    return df.sort_values(["mean_rank", "regularizer"], kind="stable").reset_index(drop=True)
