"""The tuned protocol's part of a report (protocol=tuned): written beside the ordinary tables.

    split_roles(runs)                    -> (fixed, tune, final) runs, by the record's protocol.role
    expected_max(values, n)              -> (mean, std) of the best of n trials (Dodge et al. 2019)
    write_tuning_report(runs, out_dir, baseline, plots) -> files

Files: tuning.md (the sections below), tuned_final.{md,csv,tex} (each tuned arm against the tuned
baseline on the fresh final seeds), tuned_chosen.csv, expected_best.csv, expected_best.png,
sensitivity.png. Everything is computed from the records (never from the study database), so `make
tables` regenerates it. Tuning runs are never pooled with final or fixed runs: the ordinary tables
leave them out, and the tables here read each role separately.

Expected best validation score (Dodge et al. 2019, "Show your work", eq. 1-2): with the N trial
scores v_(1) <= ... <= v_(N) of an arm, the best of n trials drawn with replacement is v_(i) with
probability P_i = (i/N)^n - ((i-1)/N)^n, so E[max_n] = sum_i P_i v_(i) and
Var[max_n] = sum_i P_i v_(i)^2 - E[max_n]^2; the band is E +- sqrt(Var). For a loss (smaller is
better) the same formula runs on -v.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from regbench.reporting import render
from regbench.reporting.collect import arm_labels
from regbench.reporting.tables import pairwise_table, per_arm_table, tag


def _prot(config) -> dict:
    return (config or {}).get("protocol") or {} if isinstance(config, dict) else {}


def roles(runs: pd.DataFrame) -> pd.Series:
    return runs["config"].map(lambda c: _prot(c).get("role") or "fixed")


def split_roles(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = roles(runs)
    return runs[r == "fixed"].copy(), runs[r == "tune"].copy(), runs[r == "final"].copy()


def without_tuning_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """What the ordinary tables read: fixed and final runs (tuning runs are in the tuning report)."""
    out = runs[roles(runs) != "tune"].copy()
    out["arm"] = arm_labels(out)
    return out


def expected_max(values, n_max: int, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """E[best of n] and its standard deviation for n = 1..n_max, n trials drawn with replacement
    from the observed trial scores (Dodge et al. 2019)."""
    v = np.sort(np.asarray(values, float) * (1 if higher_is_better else -1))
    N = len(v)
    if N == 0:
        return np.full(n_max, math.nan), np.full(n_max, math.nan)
    i = np.arange(1, N + 1)
    means, stds = [], []
    for n in range(1, n_max + 1):
        p = (i / N) ** n - ((i - 1) / N) ** n
        m = float(p @ v)
        means.append(m)
        stds.append(math.sqrt(max(0.0, float(p @ v ** 2) - m * m)))
    sign = 1 if higher_is_better else -1
    return sign * np.array(means), np.array(stds)


def tuned_keys(config: dict) -> list[str]:
    """The config keys the tuned protocol searched for this run: the shared space, then its arm's."""
    from regbench.tuning.space import _leaves

    prot = _prot(config)
    entries = _leaves(prot.get("tune") or {}, "", "protocol.tune")
    entries += _leaves((config.get("regularizer") or {}).get("tune") or {}, "regularizer", "regularizer.tune")
    return [k for k, _, _ in entries]


def config_get(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def trials_table(tune: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (study, trial): its tuned values, seeds ok / run, mean validation score, mean test/acc."""
    rows = []
    for (study, trial), g in tune.groupby(tune["config"].map(lambda c: (_prot(c).get("study"), _prot(c).get("trial"))),
                                          sort=True):
        c = g["config"].iloc[0]
        ok = g[g["status"] == "ok"]
        complete = len(ok) == len(g) and len(g) == _prot(c).get("tune_seeds")
        rows.append({"study": study, "regularizer": g["regularizer"].iloc[0], "data": g["data"].iloc[0],
                     "model": g["model"].iloc[0], "trial": int(trial), "seeds": len(g), "seeds_ok": len(ok),
                     "score": float(ok[metric].mean()) if complete else math.nan,
                     "test_acc": float(ok["test/acc"].mean()) if len(ok) else math.nan,
                     **{k: config_get(c, k) for k in tuned_keys(c)}})
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_tuning_report(runs: pd.DataFrame, out_dir: Path, baseline: str = "none", plots: bool = True) -> list[Path]:
    """The tuning sections of the report of a folder with protocol=tuned records (none: nothing)."""
    fixed, tune, final = split_roles(runs)
    if tune.empty and final.empty:
        for stem in ("tuning.md", "tuned_final.md", "tuned_final.csv", "tuned_final.tex", "tuned_chosen.csv",
                     "expected_best.csv", "expected_best.png", "sensitivity.png"):
            (out_dir / stem).unlink(missing_ok=True)
        return []
    some = (tune if not tune.empty else final)["config"].iloc[0]
    prot = _prot(some)
    metric = prot.get("metric", "val/acc")
    hib = not metric.endswith("loss")
    N, k, M = prot.get("trials"), prot.get("tune_seeds"), prot.get("final_seeds")
    files: list[Path] = []
    md = ["# Tuned protocol", "",
          f"Every arm was tuned with the same budget: N = {N} trials x k = {k} seeds "
          f"(seeds {prot.get('tune_seed_start')}..{prot.get('tune_seed_start', 0) + (k or 0) - 1}), "
          f"sampler {prot.get('sampler')} (seed {prot.get('sampler_seed')}), scored by the mean {metric} over "
          f"the k seeds (validation only: the test split influenced no choice). The best trial's config "
          f"was then trained on M = {M} fresh seeds ({prot.get('final_seed_start')}.."
          f"{prot.get('final_seed_start', 0) + (M or 0) - 1}), the numbers below.", ""]

    trials = trials_table(tune, metric) if not tune.empty else pd.DataFrame()
    # -- chosen configuration per arm
    chosen_rows = []
    for study, g in final.groupby(final["config"].map(lambda c: _prot(c).get("study")), sort=True):
        c = g["config"].iloc[0]
        t = int(_prot(c).get("trial"))
        mine = trials[trials["study"] == study] if not trials.empty else pd.DataFrame()
        row = {"regularizer": g["regularizer"].iloc[0], "data": g["data"].iloc[0], "model": g["model"].iloc[0],
               "budget": f"{N} x {k}", "n_trials_scored": int(mine["score"].notna().sum()) if len(mine) else 0,
               "n_trials_failed": int(mine["score"].isna().sum()) if len(mine) else 0, "chosen_trial": str(t),
               f"tune_{tag(metric)}": float(mine.loc[mine["trial"] == t, "score"].iloc[0]) if len(mine) and (mine["trial"] == t).any() else math.nan,
               "chosen": ", ".join(f"{key}={_fmt(config_get(c, key))}" for key in tuned_keys(c))}
        chosen_rows.append(row)
    chosen = pd.DataFrame(chosen_rows)
    if not chosen.empty:
        chosen = chosen.sort_values(["data", "model", "regularizer"], key=lambda s: s.map(lambda x: (x != baseline, x))
                                    if s.name == "regularizer" else s).reset_index(drop=True)
        p = out_dir / "tuned_chosen.csv"
        p.write_text(chosen.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        files.append(p)
        md += ["## Chosen hyperparameters per arm", "", render.markdown(chosen), "",
               f"*Legend:* budget = trials x tuning seeds (the same for every arm); n_trials_scored = trials whose "
               f"k seeds all finished ok; n_trials_failed = trials with a diverged or failed seed (no score, counted "
               f"against the budget); tune_{tag(metric)} = the chosen trial's mean over its k seeds.", ""]

    # -- the final table (fresh seeds) beside the fixed-strength one
    verdicts: dict[str, dict[str, str]] = {}
    if not final.empty:
        fin = final.copy()
        fin["arm"] = fin["regularizer"]  # one tuned config per arm
        fin_arm = per_arm_table(fin, "test/acc", baseline)
        fin_pair, notes = pairwise_table(fin, "test/acc", baseline)
        paths, _ = render.write_table(fin_pair, out_dir, "tuned_final", f"Tuned arms on {M} fresh seeds: test/acc",
                                      "as pairwise.md, over the final runs of the tuned protocol only", notes)
        files += paths
        md += [f"## Tuned arms on fresh seeds (test/acc)", "",
               render.markdown(fin_arm[["data", "model", "regularizer", "seeds_ok", "seeds_diverged", "seeds_failed",
                                        "test_acc_mean", "test_acc_std", "test_acc_ci95_low", "test_acc_ci95_high"]]),
               "", render.markdown(fin_pair[["data", "model", "regularizer", "pairing", "test_acc_diff_mean",
                                             "diff_ci95_low", "diff_ci95_high", "p_holm", "verdict"]]), ""]
        for _, r in fin_pair.iterrows():
            verdicts.setdefault(f"{r['data']}/{r['model']}", {})[r["regularizer"]] = r["verdict"]
    fixed_here = fixed[fixed["data"].isin(final["data"]) & fixed["model"].isin(final["model"])] if not final.empty else fixed
    if not fixed_here.empty and not final.empty:
        fx = fixed_here.copy()
        fx["arm"] = arm_labels(fx)
        fx_pair, notes = pairwise_table(fx, "test/acc", baseline)
        md += ["## Fixed-strength arms (protocol=fixed runs in this folder, test/acc)", "",
               render.markdown(fx_pair[["data", "model", "config", "regularizer", "pairing", "test_acc_diff_mean",
                                        "diff_ci95_low", "diff_ci95_high", "p_holm", "verdict"]]), ""]
        changes = []
        for _, r in fx_pair.iterrows():
            tuned = verdicts.get(f"{r['data']}/{r['model']}", {}).get(r["regularizer"].split(" (")[0])
            if tuned is None:
                continue
            changes.append({"data": r["data"], "model": r["model"], "regularizer": r["regularizer"],
                            "fixed_config": r["config"], "verdict_fixed": r["verdict"], "verdict_tuned": tuned,
                            "changed": "yes" if tuned != r["verdict"] else "no"})
        if changes:
            ch = pd.DataFrame(changes)
            n = int((ch["changed"] == "yes").sum())
            md += ["## Verdicts: fixed strength vs tuned", "", render.markdown(ch), "",
                   f"{n} of {len(ch)} verdict(s) changed when every arm was tuned with the same budget.", ""]
    elif not final.empty:
        md += ["No protocol=fixed runs of this data/model in this folder: no fixed-strength table to compare "
               "(run the fixed sweep with the same name to get one).", ""]

    # -- expected best validation score vs number of trials
    if not trials.empty:
        rows = []
        for study, g in trials.groupby("study", sort=True):
            scores = g["score"].dropna().to_numpy(float)
            mean, std = expected_max(scores, len(g), hib)
            for n in range(1, len(g) + 1):
                rows.append({"regularizer": g["regularizer"].iloc[0], "data": g["data"].iloc[0],
                             "model": g["model"].iloc[0], "trials": n, "expected_best": mean[n - 1],
                             "std": stds if (stds := std[n - 1]) == stds else math.nan})
        eb = pd.DataFrame(rows)
        p = out_dir / "expected_best.csv"
        p.write_text(eb.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        files.append(p)
        wide = eb.pivot_table(index="trials", columns="regularizer", values="expected_best", aggfunc="first")
        wide_sd = eb.pivot_table(index="trials", columns="regularizer", values="std", aggfunc="first")
        show = pd.DataFrame({col: [f"{m:.4f} +- {s:.4f}" for m, s in zip(wide[col], wide_sd[col])] for col in wide},
                            index=wide.index).reset_index()
        show["trials"] = show["trials"].astype(str)
        md += [f"## Expected best validation {metric} vs number of trials (Dodge et al. 2019)", "",
               render.markdown(show), "",
               "*Legend:* E[max of n trial scores, n drawn with replacement from the arm's scored trials] +- its "
               "standard deviation (the exact order-statistics estimator; expected_best.csv, expected_best.png). "
               "An arm whose curve is still rising at n = N would gain from a larger budget.", ""]
        if plots:
            files.append(_plot_expected(eb, out_dir / "expected_best.png", metric))
            files.append(_plot_sensitivity(trials, out_dir / "sensitivity.png", metric))
            md += ["Sensitivity (sensitivity.png): each trial's mean validation score and mean test/acc "
                   "against each tuned hyperparameter, per arm (test/acc shown, never used).", ""]
    p = out_dir / "tuning.md"
    p.write_text("\n".join(md))
    files.append(p)
    return files


def _plot_expected(eb: pd.DataFrame, path: Path, metric: str) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from regbench.reporting.plots import _save

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for (data, model, reg), g in eb.groupby(["data", "model", "regularizer"], sort=True):
        x, m, s = g["trials"].to_numpy(), g["expected_best"].to_numpy(float), g["std"].to_numpy(float)
        line, = ax.plot(x, m, marker="o", ms=3, label=reg)
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("trials n")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"expected best {metric}")
    ax.set_title("Expected best validation score vs budget (mean +- sd)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_sensitivity(trials: pd.DataFrame, path: Path, metric: str) -> Path:
    from matplotlib import ticker as plt_ticker
    from matplotlib.figure import Figure

    from regbench.reporting.plots import _save

    meta = {"study", "regularizer", "data", "model", "trial", "seeds", "seeds_ok", "score", "test_acc"}
    studies = sorted(trials["study"].unique())
    per = {s: [c for c in trials.columns if c not in meta and trials.loc[trials["study"] == s, c].notna().any()]
           for s in studies}
    ncol = max(1, max(len(v) for v in per.values()))
    fig = Figure(figsize=(3.2 * ncol, 2.6 * len(studies)))
    for r, s in enumerate(studies):
        g = trials[trials["study"] == s]
        for c, key in enumerate(per[s]):
            ax = fig.add_subplot(len(studies), ncol, r * ncol + c + 1)
            x = g[key].to_numpy(float)
            ax.scatter(x, g["score"], s=12, label=f"{metric} (tuning)")
            ax.scatter(x, g["test_acc"], s=12, marker="x", label="test/acc (not used)")
            # log axes for the log-uniform spaces (lr 1e-4..3e-2, weight decay 1e-6..1e-2), linear for
            # the rest (dropout p 0.05..0.8 spans 16x and reads better linear)
            if (x > 0).all() and x.max() / x.min() > 50:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(plt_ticker.NullFormatter())
            else:
                ax.xaxis.set_major_locator(plt_ticker.MaxNLocator(4))
            ax.set_xlabel(key, fontsize=8)
            ax.set_title(g["regularizer"].iloc[0], fontsize=9)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("accuracy", fontsize=8)
            if r == 0 and c == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)
