"""Claim 5 at equal optimizer steps: dropout's gain over no regularization against the training-set size.

    python experiments/dropout_size_equal_steps/analysis.py [EXPERIMENT_DIR]

Reads the final-seed records below EXPERIMENT_DIR (default: this folder; the records of `python run.py
-m experiment=dropout_size_equal_steps`, protocol=tuned: each arm's chosen config trained on fresh
seeds, `<tuned job>/final/<run>/results.json`) and writes README.md and size_gain.png/.pdf there.
Regenerating from the same records gives the same bytes.

Per size: each arm's mean test accuracy with its Student-t CI and its chosen hyperparameters, and
dropout - none paired on the shared final seeds (`regbench.reporting.stats.compare`: paired t, TOST
against the 1 pp margin), Holm-adjusted over the sizes, and the outcome (better / worse / equivalent
/ inconclusive). Srivastava et al. (2014, section 7.4, Fig. 10) found little gain from dropout at
100-500 examples, a gain that rises with size, then falls. Its three parts are read with sizes fixed
before the data (SMALL, MID, LARGE): little gain = the outcomes at SMALL; rise = gain at MID - gain at
SMALL, fall = gain at LARGE - gain at MID, each a Welch t-test on the per-seed gains (the sizes' runs
share seed numbers but not data or weights), Holm over the two.

Exit status: 0 on success, 1 when there are no final records. Its wall-clock time comes from
`timing.json` (written by `make size-axis`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

from regbench.records import read_record
from regbench.reporting.claims import report_main, timing_section
from regbench.reporting.collect import load_runs
from regbench.reporting.stats import ALPHA, compare, holm, outcome, t_mean_ci

HERE = Path(__file__).resolve().parent
BASELINE, DROPOUT = "none", "dropout"
# the contrasts' sizes, fixed before the data: the two smallest of the axis (Srivastava's "little gain"
# region), its geometric middle, and its largest
SMALL, MID, LARGE = (250, 500), 2000, 16000
LATE = 0.8          # convergence check: a best validation epoch past this share of the cap
PLOT = "size_gain.png"


def pct(v: float) -> str:
    return f"{100 * v:.1f}" if v == v else "—"


def runs_of(folder: Path, role: str = "final"):
    """The runs of one role of the tuned protocol: `final` (the fresh seeds) or `tune` (the trials)."""
    runs = load_runs([folder]).runs
    runs = runs[runs["path"].str.contains(f"/{role}/")]
    return runs.assign(size=[int(c["data"]["train_size"]) for c in runs["config"]],
                       epochs=[int(c["trainer"]["max_epochs"]) for c in runs["config"]])


SMALL_P = 0.2  # the search table counts the dropout trials below this rate


def p_low(runs) -> str:
    """The lower end of dropout's search space for p, as the records' configs declare it."""
    lows = {((c.get("regularizer") or {}).get("tune") or {}).get("dropout", {}).get("p", {}).get("low")
            for c, arm in zip(runs["config"], runs["regularizer"]) if arm == DROPOUT}
    lows.discard(None)
    return ", ".join(f"{v:g}" for v in sorted(lows)) or "?"


def search_lines(folder: Path, sizes: list[int]) -> list[str]:
    """What each arm's search tried: per size, the best trial's mean val/acc over its seeds (the protocol's score),
    and for dropout the rates tried and the best trial among those below SMALL_P."""
    tune = runs_of(folder, "tune")
    if tune.empty:
        return ["No tuning records."]
    tune = tune.assign(trial=[(c.get("protocol") or {}).get("trial") for c in tune["config"]],
                       p=[((c.get("regularizer") or {}).get("dropout") or {}).get("p") for c in tune["config"]])
    rows = ["| train size | none: trials, best val acc % | dropout: trials, best val acc % | dropout: p tried "
            f"| dropout trials with p < {SMALL_P}: n, best val acc % |", "|---:|---|---|---|---|"]
    for n in sizes:
        cells = []
        for arm in (BASELINE, DROPOUT):
            t = tune[(tune["size"] == n) & (tune["regularizer"] == arm)]
            by = t.groupby("trial")["val/acc"].mean()
            cells.append(f"{len(by)}, {pct(by.max()) if len(by) else '—'}")
        t = tune[(tune["size"] == n) & (tune["regularizer"] == DROPOUT)]
        per = t.groupby("trial").agg(p=("p", "first"), val=("val/acc", "mean"))
        low = per[per["p"] < SMALL_P]
        rows.append(f"| {n} | {cells[0]} | {cells[1]} | {per['p'].min():.2f}–{per['p'].max():.2f} | "
                    f"{len(low)}, {pct(low['val'].max()) if len(low) else '—'} |")
    return rows


def chosen(r) -> str:
    c = r["config"].iloc[0]
    parts = [f"lr {c['optim']['lr']:.2g}"]
    if (c.get("regularizer") or {}).get("dropout"):
        parts.insert(0, f"p {c['regularizer']['dropout']['p']:.2f}")
    return ", ".join(parts)


def per_seed(r) -> dict:
    ok = r[r["status"] == "ok"]
    return dict(zip(ok["seed"].astype(int), ok["test/acc"].astype(float)))


def gains(a: dict, b: dict) -> np.ndarray:
    shared = sorted(set(a) & set(b))
    return np.array([a[s] - b[s] for s in shared])


def report(folder: Path) -> str | None:
    runs = runs_of(folder)
    if runs.empty:
        return None
    sizes = sorted(set(runs["size"]))
    rows, comps, seeds = [], [], {}
    for n in sizes:
        at = runs[runs["size"] == n]
        arms = {arm: at[at["regularizer"] == arm] for arm in (BASELINE, DROPOUT)}
        seeds[n] = {arm: per_seed(r) for arm, r in arms.items()}
        comps.append(compare(seeds[n][DROPOUT], seeds[n][BASELINE]))
    p_holm = holm([c["p_verdict"] for c in comps])
    p_tost = holm([c["p_tost"] for c in comps])
    for n, c, ph, pt in zip(sizes, comps, p_holm, p_tost):
        at = runs[runs["size"] == n]
        cells = []
        for arm in (BASELINE, DROPOUT):
            r = at[at["regularizer"] == arm]
            acc = np.array(list(seeds[n][arm].values()))
            lo, hi = t_mean_ci(acc)
            cells.append(f"{pct(acc.mean()) if acc.size else '—'} [{pct(lo)}, {pct(hi)}] ({chosen(r) if len(r) else '—'})")
        steps = sorted({int(read_record(Path(f))["steps"]) for f in at["path"]})
        late = float(np.mean(at["best_epoch"].to_numpy(float) + 1 > LATE * at["epochs"].to_numpy(float)))
        rows.append(f"| {n} | {'/'.join(map(str, steps))} | {len(at)} ({int((at['status'] == 'ok').sum())} ok) | "
                    f"{cells[0]} | {cells[1]} | {100 * c['diff_mean']:+.1f} [{100 * c['ci_low']:+.1f}, "
                    f"{100 * c['ci_high']:+.1f}] | {ph:.3g} | {pt:.3g} | **{outcome(c['diff_mean'], ph, pt)}** | "
                    f"{100 * late:.0f}% |")
    shape = shape_lines(sizes, seeds, dict(zip(sizes, (outcome(c["diff_mean"], ph, pt)
                                                        for c, ph, pt in zip(comps, p_holm, p_tost)))))
    cfg = runs["config"].iloc[0]
    data, proto = cfg["data"], cfg.get("protocol") or {}
    final_seeds = sorted({int(x) for x in runs["seed"]})
    lines = [
        "# Claim 5 at equal optimizer steps: dropout's gain against the training-set size", "",
        "Generated by `analysis.py` from the final-seed records in this folder (`python run.py -m "
        "experiment=dropout_size_equal_steps`, then `python experiments/dropout_size_equal_steps/analysis.py "
        "experiments/dropout_size_equal_steps`); no number here is typed by hand.", "",
        f"Protocol (conf/experiment/dropout_size_equal_steps.yaml, as the records' configs give it): the "
        f"MNIST-1D {cfg['model']['name']}; training sets of each size are stratified subsamples of "
        f"{data.get('train_pool')} sequences the mnist1d package generates with seed "
        f"{data.get('train_generator_seed')}; validation: {data.get('val_size')} sequences generated with seed "
        f"{data.get('val_generator_seed')}; test: the benchmark's (seed {data.get('generator_seed')}); every "
        f"size trains about the same number of steps of batch {cfg['optim'].get('batch_size')} (the steps "
        f"column), so size is not confounded with training length. Both arms tuned with the same budget on "
        f"{proto.get('metric')} ({proto.get('trials')} {proto.get('sampler')} trials x {proto.get('tune_seeds')} "
        f"seeds; `none` tunes the learning rate, `dropout` the learning rate and p), then their chosen "
        f"configs trained on the same {len(final_seeds)} fresh seeds ({final_seeds[0]}-{final_seeds[-1]}).", "",
        "| train size | steps | final runs | none: test acc % [95% CI] (chosen) | dropout: test acc % [95% CI] "
        "(chosen) | dropout - none, pp [95% CI] | p (Holm) | TOST p (Holm, 1 pp) | outcome | best epoch past 80% "
        "of the cap |",
        "|---:|---|---|---|---|---|---:|---:|---|---:|",
        *rows, "",
        "Differences are paired on the shared seeds; p is the paired t-test's, Holm-adjusted over the "
        f"{len(sizes)} sizes; an outcome is `better` / `worse` when that p < {ALPHA}, else `equivalent` when the "
        "TOST p < {ALPHA} (the difference is within +-1 pp), else `inconclusive`.".replace("{ALPHA}", str(ALPHA)),
        "", "## What the searches tried", "", *search_lines(folder, sizes), "",
        "A trial's score is its mean validation accuracy over its seeds (the protocol's metric). Dropout's space "
        f"reaches p = {p_low(runs)}, next to no dropout, so a search that found the best config could not leave "
        "dropout far below `none`: where it is far below, read the outcome as what this budget finds, and the "
        "table above as why.", "",
        "## Srivastava et al.'s shape: little gain when small, rising, then falling", "", *shape, "",
        f"![dropout's gain against the training-set size]({PLOT})", "",
        "## Cost", "", timing_section(folder),
    ]
    plot(sizes, comps, folder / PLOT)
    return "\n".join(lines) + "\n"


def shape_lines(sizes: list[int], seeds: dict, outcomes: dict[int, str]) -> list[str]:
    need = [*SMALL, MID, LARGE]
    if any(n not in sizes for n in need):
        return [f"Not testable: the parts need the sizes {need}; the records have {sizes}."]
    g = {n: gains(seeds[n][DROPOUT], seeds[n][BASELINE]) for n in need}
    small = np.concatenate([g[n] for n in SMALL])
    tests = {"rise": (g[MID], small), "fall": (g[LARGE], g[MID])}
    diffs = {k: float(a.mean() - b.mean()) for k, (a, b) in tests.items()}
    ps = dict(zip(tests, holm([float(sps.ttest_ind(a, b, equal_var=False).pvalue) for a, b in tests.values()])))
    # each part: shown, contradicted (a significant effect the other way), or not shown
    small_out = [outcomes[n] for n in SMALL]
    little = ("shown" if all(o in ("equivalent", "worse") for o in small_out) else
              "contradicted" if all(o == "better" for o in small_out) else "not shown")

    def part(k: str, direction: int) -> str:
        if ps[k] >= ALPHA:
            return "not shown"
        return "shown" if diffs[k] * direction > 0 else "contradicted"

    parts = {"little gain at " + " and ".join(map(str, SMALL)): little, f"a rise to {MID}": part("rise", 1),
             f"a fall from {MID} to {LARGE}": part("fall", -1)}
    by = {state: [k for k, v in parts.items() if v == state] for state in ("shown", "contradicted", "not shown")}
    verdict = ("supported: all three parts shown" if len(by["shown"]) == 3 else
               ("contradicted" if by["contradicted"] else "not shown") + " (" +
               "; ".join(f"{state}: {', '.join(ks)}" for state, ks in by.items() if ks) + ")")
    return [
        f"- Little gain at {' and '.join(map(str, SMALL))}: the outcomes there are "
        f"{', '.join(small_out)} (shown when each is `equivalent` or `worse`, contradicted when each is "
        f"`better`).",
        f"- Rise: the gain at {MID} minus the gain at {' and '.join(map(str, SMALL))}: {100 * diffs['rise']:+.1f} pp, "
        f"Welch p (Holm) {ps['rise']:.3g}.",
        f"- Fall: the gain at {LARGE} minus the gain at {MID}: {100 * diffs['fall']:+.1f} pp, "
        f"Welch p (Holm) {ps['fall']:.3g}.",
        f"- Srivastava et al.'s shape at alpha {ALPHA}: **{verdict}**. A part is contradicted when the data "
        f"show a significant effect the other way; \"not shown\" is no evidence either way.",
    ]


def plot(sizes: list[int], comps: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regbench.reporting.plots import _save

    d = np.array([100 * c["diff_mean"] for c in comps])
    lo = np.array([100 * c["ci_low"] for c in comps])
    hi = np.array([100 * c["ci_high"] for c in comps])
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axhspan(-1, 1, color="0.9", label="+-1 pp (equivalence margin)")
    ax.errorbar(sizes, d, yerr=[d - lo, hi - d], fmt="o-", capsize=3, color="C0", label="dropout - none (95% CI)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("training sequences (about 6000 steps each)")
    ax.set_ylabel("test accuracy gain, pp")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def main(argv: list[str]) -> int:
    return report_main(argv, HERE, report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
