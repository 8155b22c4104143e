"""The Markdown views of the tables: at most 8 columns a person reads at a glance.

Every number is also in the CSV/LaTeX (all columns, raw values); here a mean and its CI share one
cell, rows keep the table's order (best first within each setting) and the best arm is marked.
"""

from __future__ import annotations

import math

import pandas as pd

from regbench.reporting.tables import tag

BEST = "★"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v, digits: int = 4, signed: bool = False) -> str:
    if _nan(v):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def mean_ci(m, lo, hi, digits: int = 4, signed: bool = False) -> str:
    """`mean [low, high]`; the interval is left out when missing."""
    if _nan(m):
        return "–"
    if _nan(lo) or _nan(hi):
        return _num(m, digits, signed)
    return f"{_num(m, digits, signed)} [{_num(lo, digits, signed)}, {_num(hi, digits, signed)}]"


def _p(v) -> str:
    return "–" if _nan(v) else (f"{v:.1e}" if v < 1e-3 else f"{v:.3f}")


def _setting(r) -> str:
    return f"{r['data']}/{r['model']} [{r['config']}]"


def per_arm_view(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    t = tag(metric)
    rows = []
    for _, r in df.iterrows():
        runs = f"{int(r['seeds_ok'])} ok" + "".join(
            f", {int(r[f'seeds_{s}'])} {s}" for s in ("collapsed", "diverged", "failed") if r[f"seeds_{s}"])
        rows.append({
            "setting": _setting(r),
            "regularizer": f"{r['regularizer']} {BEST}" if r.get("rank") == 1 else r["regularizer"],
            "runs": runs,
            f"{metric} mean [95% CI]": mean_ci(r[f"{t}_mean"], r[f"{t}_ci95_low"], r[f"{t}_ci95_high"]),
            "iqm": _num(r[f"{t}_iqm"]),
            "collapse rate [95% Wilson CI]": mean_ci(r["collapse_rate"], r["collapse_ci95_low"],
                                                     r["collapse_ci95_high"], 2),
            "test-sampling SE": _num(r.get("test_sampling_se", math.nan)),
            "note": r["note"],
        })
    return pd.DataFrame(rows, columns=["setting", "regularizer", "runs", f"{metric} mean [95% CI]", "iqm",
                                       "collapse rate [95% Wilson CI]", "test-sampling SE", "note"])


def pairwise_view(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    t = tag(metric)
    rows = []
    for _, r in df.iterrows():
        rows.append({
            "family (Holm)": r["family"],
            "comparison": f"{r['regularizer']} − {r['baseline']} ({r['pairing']})",
            "difference [95% CI]": mean_ci(r[f"{t}_diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"],
                                           signed=True),
            "p_holm": _p(r["p_holm"]),
            "p_tost_holm": _p(r["p_tost_holm"]),
            "outcome": r["verdict"],
            "MDE (80% power)": _num(r[f"mde_{t}"]),
            "P(improvement) [95% CI]": mean_ci(r["prob_improvement"], r["prob_improvement_ci95_low"],
                                               r["prob_improvement_ci95_high"], 2),
        })
    return pd.DataFrame(rows, columns=["family (Holm)", "comparison", "difference [95% CI]", "p_holm",
                                       "p_tost_holm", "outcome", "MDE (80% power)", "P(improvement) [95% CI]"])
