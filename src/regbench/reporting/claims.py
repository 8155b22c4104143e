"""Claims to verdicts, and a study's report: the parts of a study's analysis that another study reuses.

A study (e.g. experiments/dropout_vs_early_stopping/: its sweep YAML, its report template and its
analysis.py) names its claims, arms and settings; this module turns its records into per-setting
comparisons (`Context`, `resolve`: one data/model/config hash per setting), per-claim Holm families
(`compare_family`), verdicts (`tally`, `verdict_line`: the rules in VERDICT_RULE), the README's cells
and tables (`fmt_*`, `md_table`) and generic sections (`overview_section`, `health_section`,
`timing_section`), and fills the study's template into README.md (`write_readme`; `main` is the
command line, with `--if-changed`). It knows no study's arms or settings.

A setting is any object with `data`, `model`, `wanted_size` (the effective training-set size its
runs must have, matched against the runs' `train_size` column) and `label`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from regbench import health
from regbench.atomic import write_atomic
from regbench.records import lookup
from regbench.reporting import stats
from regbench.reporting.report import NoRunsError, Report
from regbench.reporting.tables import tag

TIMING_FILE = "timing.json"
README_NAME = "README.md"

NOT_RUN = "not run"
NOT_MEASURED = "not measured"
TESTED = stats.OUTCOMES  # better, worse, equivalent, inconclusive


# --------------------------------------------------------------------------------------
# number formats (the README shows numbers only through these)
# --------------------------------------------------------------------------------------

def is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def fmt_num(x: Any, digits: int = 3) -> str:
    return "–" if is_nan(x) else f"{float(x):.{digits}f}"


def fmt_ci(mean: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """`mean [lo, hi]`; the interval is left out when it is missing."""
    if is_nan(mean):
        return "–"
    if is_nan(lo) or is_nan(hi):
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def fmt_acc(mean: Any, lo: Any = None, hi: Any = None) -> str:
    """An accuracy (fraction) in percent with 2 decimals: `67.12 [66.50, 67.80]`."""
    scale = lambda v: None if is_nan(v) else 100.0 * float(v)  # noqa: E731
    return fmt_ci(scale(mean), scale(lo), scale(hi), 2)


def fmt_pp(diff: Any, lo: Any = None, hi: Any = None) -> str:
    """A difference of accuracies in percentage points, signed: `+1.23 [+0.40, +2.10]`."""
    scale = lambda v: None if is_nan(v) else 100.0 * float(v)  # noqa: E731
    return fmt_diff(scale(diff), scale(lo), scale(hi), 2)


def fmt_diff(diff: Any, lo: Any = None, hi: Any = None, digits: int = 3) -> str:
    if is_nan(diff):
        return "–"
    s = f"{float(diff):+.{digits}f}"
    if is_nan(lo) or is_nan(hi):
        return s
    return f"{s} [{float(lo):+.{digits}f}, {float(hi):+.{digits}f}]"


def fmt_p(p: Any) -> str:
    """As the comparison tables print p-values (regbench.reporting.render)."""
    if is_nan(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def md_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if i in right else ":---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# settings -> contexts (one data/model/config hash each)
# --------------------------------------------------------------------------------------

@dataclass
class Context:
    setting: Any                    # data, model, wanted_size, label
    group_hash: str | None          # None: no records for this setting
    runs: pd.DataFrame              # its runs, every status
    note: str = ""
    ambiguous: dict = field(default_factory=dict)   # regularizer -> its several arm labels here
    _labels: dict = field(default_factory=dict, repr=False)
    _values: dict = field(default_factory=dict, repr=False)

    @property
    def ran(self) -> bool:
        return self.group_hash is not None

    def arm(self, name: str) -> str | None:
        """The arm label of regularizer `name` here (the name itself unless its settings varied)."""
        if not self.ran:
            return None
        if name not in self._labels:
            mine = self.runs[self.runs["regularizer"] == name]
            ok = mine[mine["status"] == "ok"].groupby("arm").size()
            # several settings of one regularizer (e.g. two dropout rates): the one with the most ok runs
            labels = sorted(mine["arm"].unique(), key=lambda a: (a != name, -int(ok.get(a, 0)), a))
            self._labels[name] = labels[0] if labels else None
            if len(labels) > 1:
                self.ambiguous[name] = sorted(labels)
        return self._labels[name]

    def values(self, name: str, column: str) -> dict:
        """{seed: value} of the ok runs of arm `name` with a finite `column` (duplicates averaged)."""
        if (name, column) in self._values:
            return dict(self._values[(name, column)])
        label = self.arm(name)
        if label is None:
            return {}
        g = self.runs[(self.runs["arm"] == label) & (self.runs["status"] == "ok")]
        g = g[g[column].notna()]
        keys = [s if not is_nan(s) else p for s, p in zip(g["seed"], g["path"])]
        out = pd.Series(g[column].to_numpy(float), index=keys).groupby(level=0).mean().to_dict()
        self._values[(name, column)] = out
        return dict(out)

    def config_value(self, *keys: str) -> Any:
        if not self.ran or self.runs.empty:
            return None
        return lookup(self.runs["config"].iloc[0], *keys)


def resolve(runs: pd.DataFrame, setting: Any) -> Context:
    """The config hash that stands for `setting`: the one with the most ok runs (then the smallest hash)."""
    sel = runs[(runs["data"] == setting.data) & (runs["model"] == setting.model)]
    sel = sel[[ts == setting.wanted_size for ts in sel["train_size"]]]
    if sel.empty:
        return Context(setting, None, sel)
    ok = sel[sel["status"] == "ok"].groupby("group_hash").size()
    hashes = sorted(sel["group_hash"].unique(), key=lambda h: (-int(ok.get(h, 0)), h))
    note = ""
    if len(hashes) > 1:
        note = (f"config {hashes[0]} used (most ok runs); other config(s) of this setting left out: "
                f"{', '.join(hashes[1:])}")
    return Context(setting, hashes[0], sel[sel["group_hash"] == hashes[0]], note)


def per_arm_row(report: Report, ctx: Context, name: str) -> pd.Series | None:
    label = ctx.arm(name)
    if label is None:
        return None
    pa = report.per_arm
    m = pa[(pa["data"] == ctx.setting.data) & (pa["model"] == ctx.setting.model)
           & (pa["config"] == ctx.group_hash) & (pa["regularizer"] == label)]
    return m.iloc[0] if len(m) else None


def acc_cell(report: Report, ctx: Context, name: str, metric: str = "test/acc") -> str:
    """An accuracy `metric` of arm `name` in percent with its 95% CI, as the per-arm table has it."""
    r = per_arm_row(report, ctx, name)
    if r is None:
        return NOT_RUN
    t = tag(metric)
    return fmt_acc(r[f"{t}_mean"], r[f"{t}_ci95_low"], r[f"{t}_ci95_high"])


def n_ok(report: Report, ctx: Context, name: str) -> int:
    r = per_arm_row(report, ctx, name)
    return 0 if r is None else int(r["seeds_ok"])


# --------------------------------------------------------------------------------------
# verdict rules
# --------------------------------------------------------------------------------------

CATEGORIES = ("supported", "partly supported", "mixed", "partly contradicted", "contradicted", "no effect",
              "inconclusive", NOT_RUN)


def tally(outcomes: list[str]) -> tuple[str, int, int, int]:
    """(category, n tested, k better, j worse) from per-setting outcomes (see VERDICT_RULE).

    Symmetric: supported / contradicted = better / worse on all n; partly supported / partly
    contradicted = better / worse on some, the other direction on none; mixed = both directions;
    no effect = equivalent on all n; inconclusive = otherwise (no direction shown, equivalence not
    shown everywhere)."""
    tested = [o for o in outcomes if o in TESTED]
    n, k, j, e = len(tested), tested.count("better"), tested.count("worse"), tested.count("equivalent")
    if n == 0:
        cat = NOT_RUN
    elif k and j:
        cat = "mixed"
    elif k == n:
        cat = "supported"
    elif j == n:
        cat = "contradicted"
    elif k:
        cat = "partly supported"
    elif j:
        cat = "partly contradicted"
    elif e == n:
        cat = "no effect"
    else:
        cat = "inconclusive"
    return cat, n, k, j


def verdict_line(outcomes: list[str], better: str, worse: str, what: str) -> str:
    cat, n, k, j = tally(outcomes)
    if cat == NOT_RUN:
        return f"**{NOT_RUN}** ({what}: no setting with a testable comparison)"
    e = [o for o in outcomes if o in TESTED].count("equivalent")
    return (f"**{cat}** ({what}: {better} on {k} of {n} tested settings, {worse} on {j}, "
            f"equivalent on {e}, inconclusive on {n - k - j - e})")


def rename_outcome(outcome: str, better: str, worse: str) -> str:
    return {"better": better, "worse": worse}.get(outcome, outcome)


VERDICT_RULE = f"""\
- **Per setting**, a comparison has one of four outcomes: *better* / *worse* when its Holm-adjusted p-value
  is below {stats.ALPHA} (the direction from the mean difference); else *equivalent* when the two one-sided
  tests (TOST: paired `statsmodels` `ttost_paired`, Welch `ttost_ind` when unpaired) show the difference lies
  within ±{stats.EQUIVALENCE_MARGIN:g} (1 pp of accuracy; the same number in a mechanism metric's own units),
  Holm-adjusted the same way; else *inconclusive* (neither a difference nor equivalence is shown). *Not
  testable* when either side has fewer than 2 ok runs; *not run* when the setting or one of the two arms has
  no records.
- **Holm families are per claim**: each table below is one family (its rows, or the rows of the tables a
  section names), so adding an arm or a setting to another claim changes no p-value here.
  [pairwise.md](pairwise.md) uses per-setting families instead (its rows against `none` in one data/model/config).
  Comparisons are paired on shared seeds (paired t-test), with `regbench.reporting.stats.compare`.
- **Collapsed runs** (status `collapsed`: final train accuracy within {health.CHANCE_MARGIN:g} of chance, or at least
  {health.DEAD_FRACTION:.0%} of the hidden units dead; `regbench.health`) are counted in the training-health table
  and left out of every statistic, like diverged and failed runs.
- **Per claim**, over the n settings with a tested outcome (symmetric labels): **supported** / **contradicted**
  = better / worse on all n; **partly supported** / **partly contradicted** = better / worse on some and the
  other direction on none; **mixed** = better on some and worse on some; **no effect** = equivalent on all n;
  **inconclusive** = none of these (no direction, equivalence not shown everywhere); **not run** = n = 0.
- The 95% intervals are Student t-intervals: of an arm's mean over seeds, or of the mean per-seed difference
  when paired (see `src/regbench/reporting/README_STATS.md`; a percentile bootstrap covers only about 90% at
  10 seeds)."""


# --------------------------------------------------------------------------------------
# comparisons computed here (families with their own Holm correction)
# --------------------------------------------------------------------------------------

@dataclass
class Comparison:
    key: tuple
    result: dict[str, Any] = field(default_factory=dict)
    p_holm: float = math.nan
    p_tost_holm: float = math.nan
    outcome: str = NOT_RUN


def compare_family(specs: list[tuple[tuple, dict | None, dict | None, bool]]) -> dict[tuple, Comparison]:
    """Compare each (key, arm {seed: v}, base {seed: v}, higher_is_better); Holm over the compared rows.

    A spec with None for either side is `not run`; with a string for either side, that is its outcome."""
    out = {key: Comparison(key) for key, *_ in specs}
    for key, a, b, _ in specs:
        if isinstance(a, str) or isinstance(b, str):
            out[key].outcome = a if isinstance(a, str) else b
    run = [(key, a, b, hib) for key, a, b, hib in specs if isinstance(a, dict) and isinstance(b, dict)]
    results = [stats.compare(a, b, higher_is_better=hib) for _, a, b, hib in run]
    p_holm = stats.holm([r["p_verdict"] for r in results]) if results else []
    p_tost = stats.holm([r["p_tost"] for r in results]) if results else []
    for (key, _a, _b, hib), r, ph, pt in zip(run, results, p_holm, p_tost):
        c = out[key]
        c.result, c.p_holm, c.p_tost_holm = r, float(ph), float(pt)
        if min(r["n_arm"], r["n_baseline"]) < 2:
            c.outcome = "not testable"
        else:
            c.outcome = stats.outcome(r["diff_mean"], ph, pt, hib)
    return out


def accuracy_family(contexts: list[Context], names: tuple[str, ...], base: str = "none",
                    metric: str = "test/acc") -> dict[tuple, Comparison]:
    """One Holm family: `metric` (higher is better) of each arm in `names` against `base` in each
    context, keyed (name, setting)."""
    return compare_family([((name, ctx.setting), vals_or_none(ctx, name, metric) if ctx.arm(base) else None,
                            vals_or_none(ctx, base, metric), True) for name in names for ctx in contexts])


def family_cells(fam: dict[tuple, Comparison], key: tuple) -> tuple[str, str, str]:
    """(difference in pp with CI, p_holm within the family, outcome)."""
    c = fam[key]
    r = c.result
    if not r:
        return NOT_RUN if c.outcome == NOT_RUN else "–", "–", c.outcome
    return fmt_pp(r["diff_mean"], r["ci_low"], r["ci_high"]), fmt_p(c.p_holm), c.outcome


def vals_or_none(ctx: Context, name: str, column: str) -> dict | None:
    if ctx.arm(name) is None:
        return None
    return ctx.values(name, column)


def mean_ci_cell(vals: dict, digits: int = 3) -> str:
    """Mean over seeds with its 95% bootstrap CI."""
    x = np.array([vals[k] for k in sorted(vals, key=str)], float)
    if x.size == 0:
        return "–"
    lo, hi = stats.bootstrap_mean_ci(x)
    return fmt_ci(float(x.mean()), lo, hi, digits)


def overview_section(runs: pd.DataFrame, contexts: list[Context], arms: tuple[str, ...]) -> str:
    """How many records, and per setting (each once, in the order of `contexts`) its config, its arms
    with records (`arms` first, in their order), its ok runs and seeds."""
    counts = {s: int((runs["status"] == s).sum()) for s in ("ok", "collapsed", "diverged", "failed")}
    lines = [f"{len(runs)} run records read ({counts['ok']} ok, {counts['collapsed']} collapsed, "
             f"{counts['diverged']} diverged, {counts['failed']} failed); only ok runs enter the statistics."]
    rows = []
    seen: set = set()
    shown: dict[tuple, str] = {}
    for ctx in contexts:
        if ctx.setting in seen:
            continue
        seen.add(ctx.setting)
        if not ctx.ran:
            rows.append([ctx.setting.label, "–", str(ctx.setting.wanted_size or "–"), NOT_RUN, "0", "–", ""])
            continue
        key = (ctx.setting.data, ctx.setting.model, ctx.group_hash)
        if key in shown:
            rows.append([ctx.setting.label, ctx.group_hash, str(ctx.setting.wanted_size or "–"),
                         f"the runs of {shown[key]}", "–", "–", ""])
            continue
        shown[key] = ctx.setting.label
        ok = ctx.runs[ctx.runs["status"] == "ok"]
        present = [a for a in arms if ctx.arm(a) is not None]
        extra = sorted(set(ctx.runs["regularizer"]) - set(arms))
        per_arm = ok.groupby("arm").size()
        seeds = f"{int(per_arm.min())}–{int(per_arm.max())}" if len(per_arm) else "0"
        notes = [ctx.note] if ctx.note else []
        notes += [f"{name} ran with several settings ({'; '.join(labels)}): the study uses {ctx.arm(name)}"
                  for name, labels in sorted(ctx.ambiguous.items())]
        rows.append([ctx.setting.label, ctx.group_hash, str(ctx.setting.wanted_size or "–"),
                     ", ".join(present + extra) or "–", str(len(ok)), seeds, "; ".join(notes)])
    table = md_table(["setting", "config", "train size", "arms with records", "ok runs", "ok seeds per arm",
                      "note"], rows, right={2, 4, 5})
    total = float(np.nansum(runs["train_seconds"].to_numpy(float)))
    lines += ["", table, "",
              f"Training time summed over all records (fit only, as recorded): {total:.0f} s "
              f"({total / 3600:.2f} h of single-run time)."]
    return "\n".join(lines)


def health_section(report: Report, runs: pd.DataFrame, metric: str = "test/acc") -> str:
    """Training health: every arm with a collapsed run, its rate with a Wilson CI and its seeds."""
    pa, t = report.per_arm, tag(metric)
    rule = (f"A run is *collapsed* when it finished but did not train: final train accuracy within "
            f"{health.CHANCE_MARGIN:g} of chance (1/10), or at least {health.DEAD_FRACTION:.0%} of its hidden units "
            f"never active on the test set (`regbench.health`; derived from each record on read). Collapsed runs "
            f"are excluded from every statistic below and counted here.")
    if pa.empty or not (pa["seeds_collapsed"] > 0).any():
        return rule + " No run of this study collapsed."
    rows = []
    for _, r in pa[pa["seeds_collapsed"] > 0].sort_values(["data", "model", "config", "regularizer"]).iterrows():
        g = runs[(runs["data"] == r["data"]) & (runs["model"] == r["model"]) & (runs["group_hash"] == r["config"])
                 & (runs["arm"] == r["regularizer"]) & (runs["status"] == "collapsed")]
        seeds = ", ".join(str(x) for x in sorted(g["seed"].tolist(), key=str))
        finished = int(r["seeds_ok"] + r["seeds_collapsed"])
        rows.append([f"{r['data']}/{r['model']}", r["config"], r["regularizer"],
                     f"{int(r['seeds_collapsed'])} / {finished}",
                     fmt_ci(100 * r["collapse_rate"], 100 * r["collapse_ci95_low"], 100 * r["collapse_ci95_high"], 0),
                     seeds, fmt_acc(r[f"{t}_mean"]), fmt_acc(r[f"{t}_mean_with_collapsed"])])
    table = md_table(["setting", "config", "arm", "collapsed / finished runs", "rate % [95% Wilson CI]", "seeds",
                      "test acc % without them", "with them (not used)"], rows, right={3, 4, 6, 7})
    warn = [f"- {w}" for w in report.warnings]
    return "\n".join([rule, "", table] + ([""] + warn if warn else []))


def report_main(argv: list[str], default_dir: Path, report: Callable[[Path], str | None]) -> int:
    """The command line of a small study report, ``analysis.py [EXPERIMENT_DIR] [--if-changed]``:
    ``report(dir)`` becomes ``dir/README.md`` (and is printed); exit 1 when it finds no records.
    ``--if-changed`` is accepted, as ``make tables`` passes it, and ignored: such a report is fast."""
    args = [a for a in argv if a != "--if-changed"]
    folder = Path(args[0]) if args else default_dir
    text = report(folder)
    if text is None:
        print(f"no readable records below {folder}", file=sys.stderr)
        return 1
    (folder / "README.md").write_text(text)
    print(text)
    return 0


def timing_section(experiment_dir: Path) -> str:
    path = experiment_dir / TIMING_FILE
    if not path.is_file():
        return f"Not recorded (no `{TIMING_FILE}` in the experiment folder)."
    try:
        t = json.loads(path.read_text())
        seconds = float(t["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"`{TIMING_FILE}` is unreadable ({type(e).__name__}), so no wall-clock time is given."
    parts = [f"The whole study took {seconds:.0f} s of wall-clock time ({seconds / 3600:.2f} h)"]
    if t.get("machine"):
        parts.append(f" on {t['machine']}")
    text = "".join(parts) + "."
    if t.get("command"):
        text += f" Command:\n\n```\n{t['command']}\n```"
    return text


def mean_of(ctx: Context, name: str, column: str) -> float:
    vals = vals_or_none(ctx, name, column)
    return float(np.mean(list(vals.values()))) if vals else math.nan




# --------------------------------------------------------------------------------------
# the README: a study's template filled with its fields
# --------------------------------------------------------------------------------------

def template_path(experiment_dir: Path, default: Path, template: str | Path | None = None) -> Path:
    """`template` if given, else the experiment folder's own file named like `default`, else `default`."""
    if template is not None:
        return Path(template)
    own = Path(experiment_dir) / Path(default).name
    return own if own.is_file() else Path(default)


def write_readme(path: Path, template: str, fields: dict[str, str]) -> Path:
    """`template` filled by `string.Template` with `fields` (every placeholder must have one), trailing
    spaces dropped, written atomically to `path`: the same fields give the same bytes."""
    text = string.Template(template).substitute(fields)
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return path


def main(argv: list[str] | None, *, prog: str, description: str, default_dir: Path, default_template: Path,
         write_study: Callable[..., Any], code: str) -> int:
    """A study's command line: `prog [EXPERIMENT_DIR] [--template FILE] [--no-plots] [--if-changed]`.

    `write_study(experiment_dir, template, plots=...)` writes the report and returns an object with
    `readme`, `runs` and `verdicts`; `code` (a digest of the study's own source) joins the report's
    fingerprint, so `--if-changed` rebuilds after an edit of the study too. Exit status: 0 on success,
    1 when there are no readable records, 2 on a usage error."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("experiment_dir", nargs="?", default=str(default_dir),
                   help=f"the study's sweep folder (default: {default_dir})")
    p.add_argument("--template", help=f"README template (default: EXPERIMENT_DIR/{default_template.name}, else "
                                      f"{default_template})")
    p.add_argument("--no-plots", action="store_true", help="tables and README only")
    p.add_argument("--if-changed", action="store_true",
                   help="do nothing when the records (and the reporting code) are those of the last report")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s: %(message)s")
    d = Path(args.experiment_dir)
    if not d.is_dir():
        print(f"error: {d} is not a folder", file=sys.stderr)
        return 2
    tpl = template_path(d, default_template, args.template)
    if not tpl.is_file():
        print(f"error: template {tpl} not found", file=sys.stderr)
        return 2
    from regbench.reporting import stamp

    fp = stamp.fingerprint(d, template=tpl.read_text(), plots=not args.no_plots, study_code=code)
    if args.if_changed and stamp.is_current(d, "study", fp):
        print(f"{d}: study report unchanged (its records are those of its README)")
        return 0
    try:
        study = write_study(d, args.template, plots=not args.no_plots)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stamp.mark(d, "study", fp)
    print(f"{study.readme}: {len(study.runs)} runs; verdicts:")
    for k, v in study.verdicts.items():
        print(f"  {k}: {v}")
    return 0
