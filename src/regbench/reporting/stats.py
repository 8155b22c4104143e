"""The statistics behind the comparison tables.

Everything is scipy.stats except two one-liners scipy lacks: Holm's step-down correction and the
probability of improvement of Agarwal et al. (2021). Bootstrap intervals use a fixed seed, so a
report regenerated from the same records has the same numbers.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_METHOD = "percentile"  # robust for n = 2..10 and for constant samples (BCa is NaN there)
BOOTSTRAP_SEED = 0               # every interval uses a fresh generator with this seed
ALPHA = 0.05                     # family-wise level of the verdicts (after Holm)


@contextmanager
def _quiet():
    """Silence scipy's small-sample / degenerate-data warnings: the tables show NaN and a note instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50 % (25 % trimmed from each end)."""
    x = np.asarray(x, float)
    return float(stats.trim_mean(x, 0.25)) if x.size else float("nan")


def bootstrap_mean_ci(x) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of the mean; (nan, nan) with fewer than 2 values."""
    x = np.asarray(x, float)
    if x.size < 2:
        return float("nan"), float("nan")
    with _quiet():
        ci = stats.bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                             method=BOOTSTRAP_METHOD, rng=_rng()).confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap_diff_ci(a, b) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of mean(a) - mean(b), a and b resampled independently."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")

    def diff(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    with _quiet():
        ci = stats.bootstrap((a, b), diff, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                             method=BOOTSTRAP_METHOD, rng=_rng()).confidence_interval
    return float(ci.low), float(ci.high)


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaN entries are not part of the family and stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    idx = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    out[idx] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[idx]))
    return out


def prob_improvement(x, y) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs (Agarwal et al. 2021, rliable).

    Equals the Mann-Whitney U statistic of x against y divided by len(x) * len(y).
    """
    x, y = np.asarray(x, float)[:, None], np.asarray(y, float)[None, :]
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(np.mean((x > y) + 0.5 * (x == y)))


def _pvalue(test, *args, **kwargs) -> float:
    try:
        with _quiet():
            p = float(test(*args, **kwargs).pvalue)
    except ValueError:  # e.g. wilcoxon with every difference zero
        return float("nan")
    return p


def compare(arm: dict[Any, float], base: dict[Any, float], higher_is_better: bool = True) -> dict[str, Any]:
    """Compare one arm with the baseline; both given as {seed: value} of their ok runs.

    With at least 2 shared seeds the comparison is paired on the shared seeds (the other runs are
    left out of it): bootstrap CI of the mean per-seed difference, paired t-test (the verdict's test),
    Wilcoxon signed-rank. Otherwise it is unpaired on all runs: independent bootstrap of the
    difference of means, Welch's t-test (the verdict's test). Welch's p is always reported.
    """
    shared = sorted(set(arm) & set(base), key=str)
    paired = len(shared) >= 2
    if paired:
        a = np.array([arm[s] for s in shared], float)
        b = np.array([base[s] for s in shared], float)
    else:
        a = np.array([arm[s] for s in sorted(arm, key=str)], float)
        b = np.array([base[s] for s in sorted(base, key=str)], float)
    out: dict[str, Any] = {
        "paired": paired, "n_shared": len(shared), "n_arm": a.size, "n_baseline": b.size,
        "diff_mean": float(a.mean() - b.mean()) if a.size and b.size else float("nan"),
        "ci_low": float("nan"), "ci_high": float("nan"),
        "p_welch": float("nan"), "p_paired_t": float("nan"), "p_wilcoxon": float("nan"),
        "p_verdict": float("nan"),
        "prob_improvement": prob_improvement(a, b) if higher_is_better else prob_improvement(-a, -b),
    }
    if a.size < 2 or b.size < 2:
        return out
    out["p_welch"] = _pvalue(stats.ttest_ind, a, b, equal_var=False)
    if paired:
        out["ci_low"], out["ci_high"] = bootstrap_mean_ci(a - b)
        out["p_paired_t"] = _pvalue(stats.ttest_rel, a, b)
        out["p_wilcoxon"] = _pvalue(stats.wilcoxon, a, b)
        out["p_verdict"] = out["p_paired_t"]
    else:
        out["ci_low"], out["ci_high"] = bootstrap_diff_ci(a, b)
        out["p_verdict"] = out["p_welch"]
    if np.isnan(out["p_verdict"]) and out["diff_mean"] == 0:
        out["p_verdict"] = 1.0  # identical constant samples: no evidence of any difference
    return out


def verdict(diff: float, p_holm: float, higher_is_better: bool = True) -> str:
    if np.isnan(p_holm):
        return "not testable"
    if p_holm >= ALPHA:
        return "no detectable difference"
    return "better" if (diff > 0) == higher_is_better else "worse"
