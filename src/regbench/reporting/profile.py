"""Performance profile (Dolan & Moré 2002) of the arms over the distinct data/model settings.

For each distinct setting s (a data/model pair; its configs' arm means averaged, as in the ranking)
and arm a, the cost is the error 1 - mean accuracy (or the mean loss) and the ratio
r(s, a) = cost(s, a) / min_a' cost(s, a'). The profile rho_a(tau) is the fraction of settings with
r(s, a) <= tau: rho_a(1) is the share of settings the arm wins, and a curve that rises sooner is
better everywhere. An arm without runs in a setting counts as never within any tau there.

Why not rliable's `create_performance_profile`: it needs a runs x tasks score matrix with the same
number of runs per task and arm, which excluded (collapsed / failed) runs break, and it profiles raw
scores over a threshold, whose scale differs between settings; this is the matplotlib Dolan-Moré plot
over per-setting means, one curve per arm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from regbench.reporting.tables import tag

PROFILE_FILE = "profile.png"


def profile_ratios(per_arm: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame:
    """settings x arms table of Dolan-Moré ratios (inf where an arm has no mean in a setting)."""
    t = tag(metric)
    pa = per_arm[per_arm[f"{t}_mean"].notna()] if len(per_arm) else per_arm
    if pa.empty:
        return pd.DataFrame()
    score = pa.groupby(["data", "model", "regularizer"])[f"{t}_mean"].mean().unstack("regularizer")
    cost = 1.0 - score if metric.endswith("acc") else score  # error rate, or the loss itself
    cost = cost[cost.notna().sum(axis=1) >= 2]
    best = cost.min(axis=1)
    ratios = cost.div(best.where(best > 0, np.nan), axis=0)
    ratios[cost.eq(best, axis=0)] = 1.0  # a best of 0 error: the winner is 1, the others inf
    return ratios.fillna(np.inf)


def write_profile(per_arm: pd.DataFrame, out_dir: Path, metric: str = "test/acc") -> list[Path]:
    """profile.png when at least two distinct settings have two arms; removes a stale one otherwise."""
    path = Path(out_dir) / PROFILE_FILE
    ratios = profile_ratios(per_arm, metric)
    if len(ratios) < 2:
        path.unlink(missing_ok=True)
        return []
    import matplotlib
    from matplotlib.figure import Figure

    finite = ratios.to_numpy()[np.isfinite(ratios.to_numpy())]
    top = max(1.05, float(finite.max()) * 1.05) if finite.size else 2.0
    taus = np.linspace(1.0, top, 400)
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, arm in enumerate(sorted(ratios.columns)):
        r = ratios[arm].to_numpy()
        rho = (r[None, :] <= taus[:, None]).mean(axis=1)
        ax.step(taus, rho, where="post", color=cycle[i % len(cycle)], label=arm,
                ls="-" if i < len(cycle) else "--")
    ax.set_xlabel("τ: error relative to the best arm of the setting" if metric.endswith("acc")
                  else f"τ: {metric} relative to the best arm")
    ax.set_ylabel(f"share of the {len(ratios)} settings")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Performance profile (Dolan–Moré), {metric}")
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return [path]
