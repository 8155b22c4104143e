"""The dropout-versus-early-stopping study: the seed document's claims against measured numbers.

    python experiments/dropout_vs_early_stopping/analysis.py [EXPERIMENT_DIR] [--template FILE] [--no-plots]
        [--if-changed]

Reads every results.json below EXPERIMENT_DIR (default: this folder, the study's Hydra sweep folder
with one sub-folder per run), writes the comparison tables and plots there
(`regbench.reporting.write_report`: per_arm, pairwise, ranking, curves, intervals, gap), then
size_effect.png and README.md. README.md is `report_template.md` (EXPERIMENT_DIR's own if it has
one, else this folder's) filled by `string.Template` with tables and verdicts computed here from
the records (`regbench.reporting.claims`: comparisons, Holm families, verdict rules, rendering): no
number is typed by hand, and regenerating from the same records gives the same bytes (no
timestamps, fixed order).

The arms and settings are those of the study's sweeps, conf/experiment/dropout_vs_early_stopping.yaml
(its `regularizer` and `+setting` values, each setting composed by Hydra into its data, model and
data.train_size) and dropout_vs_early_stopping_sanity.yaml (its models and data): `read_sweep`.
The claims name the arms they compare (BASELINE, DROPOUT, ...) and the published numbers they check.

What the records need: `data`, `model`, `regularizer`, `seed`, `group_hash`, `metrics`, `config`
(its `data.train_size` puts a run on the training-set-size axis; null = the whole training split)
and, for the mechanism and calibration sections, `extra.mechanism` as written by
`regbench.analysis.measure` (`extra.mc_entropy_test` for MC dropout). A setting or arm without
records is reported as "not run". Optional `timing.json` in EXPERIMENT_DIR
(`{"seconds": ..., "command": ..., "machine": ...}`) adds the study's wall-clock time.

Exit status: 0 on success, 1 when there are no readable records, 2 on a usage error.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from torch import nn

from regbench.records import lookup, read_record
from regbench.regularizers.layers import DropoutLayer, dropout
from regbench.reporting import claims, stats
from regbench.reporting.claims import (NOT_MEASURED, NOT_RUN, README_NAME, TESTED, VERDICT_RULE,
                                       Context, accuracy_family, acc_cell, compare_family, family_cells,
                                       fmt_acc, fmt_diff, fmt_num, fmt_p, fmt_pp, health_section, is_nan,
                                       md_table, mean_ci_cell, mean_of, n_ok, overview_section, per_arm_row,
                                       rename_outcome, resolve, tally, template_path, timing_section,
                                       vals_or_none, verdict_line, write_readme)
from regbench.reporting.collect import load_runs
from regbench.reporting.report import Report, write_report

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE  # the study's records are beside its code
TEMPLATE = HERE / "report_template.md"
SIZE_PLOT = "size_effect.png"
# the study's sweeps, whose arms and settings this file reads: conf/experiment/<this folder's name>.yaml
# (the main sweep) and <name>_sanity.yaml (the sanity sweep), in the checkout the study lives in
CONF = HERE.parents[1] / "conf"
EXPERIMENT = HERE.name

# the arms the claims name (each must be one of the main sweep's regularizers)
BASELINE = "none"
DROPOUT, EARLY, COMBO = "dropout", "early_stop", "dropout_early_stop"
DROPOUT_VARIANTS = ("gaussian_dropout", "maxnorm_dropout")
METRIC = "test/acc"
T = "test_acc"  # regbench.reporting.tables.tag(METRIC)

# size of the whole training split (after the validation carve-out) when data.train_size is null
FULL_TRAIN_SIZE = {"mnist1d": 3500, "mnist5k": 3500, "digits": 1257}


@dataclass(frozen=True)
class Setting:
    data: str
    model: str
    train_size: int | None = None  # None: the whole training split

    @property
    def wanted_size(self) -> int | None:
        return self.train_size if self.train_size is not None else FULL_TRAIN_SIZE.get(self.data)

    @property
    def label(self) -> str:
        return f"{self.data}/{self.model}" + (f" (n={self.train_size})" if self.train_size is not None else "")


@dataclass(frozen=True)
class Sweep:
    """What the study's sweep YAMLs declare, in their order."""
    arms: tuple[str, ...]             # the main sweep's regularizers
    settings: tuple[Setting, ...]     # the main sweep's +setting values, each composed by Hydra
    sanity: tuple[Setting, ...]       # the sanity sweep's models on its data


def _swept(params: Any, key: str, where: str) -> list[str]:
    """The values of sweep parameter `key` (Hydra's own override parser: `a,b,c`, `range(..)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if key not in params:
        raise ValueError(f"{where}: hydra.sweeper.params has no {key!r}; the study needs it")
    override = OverridesParser.create().parse_override(f"{key}={params[key]}")
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]


def read_sweep(conf_dir: Path = CONF, experiment: str = EXPERIMENT) -> Sweep:
    """The study's arms and settings, composed from conf_dir as `run.py -m experiment=...` would."""
    from hydra import compose, initialize_config_dir

    main, sanity = f"experiment/{experiment}.yaml", f"experiment/{experiment}_sanity.yaml"
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        arms = tuple(_swept(cfg.hydra.sweeper.params, "regularizer", main))
        settings = []
        for name in _swept(cfg.hydra.sweeper.params, "+setting", main):
            c = compose(config_name="config", overrides=[f"experiment={experiment}", f"+setting={name}"])
            settings.append(Setting(c.data.name, c.model.name, c.data.train_size))
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}_sanity"], return_hydra_config=True)
        models = _swept(cfg.hydra.sweeper.params, "model", sanity)
        sanity_settings = tuple(Setting(cfg.data.name, model) for model in models)
    missing = [a for a in (BASELINE, DROPOUT, EARLY, COMBO, *DROPOUT_VARIANTS) if a not in arms]
    if missing:
        raise ValueError(f"{main}: regularizer={','.join(arms)} lacks {', '.join(missing)}, which the claims compare")
    return Sweep(arms, tuple(settings), sanity_settings)


def read_settings(experiment: str, conf_dir: Path = CONF) -> tuple[Setting, ...]:
    """The `+setting` values of sweep `experiment`, each composed into its data, model and train size."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        out = []
        for name in _swept(cfg.hydra.sweeper.params, "+setting", f"experiment/{experiment}.yaml"):
            c = compose(config_name="config", overrides=[f"experiment={experiment}", f"+setting={name}"])
            out.append(Setting(c.data.name, c.model.name, c.data.train_size))
    return tuple(out)


SWEEP = read_sweep()
ARMS = SWEEP.arms
MAIN_SETTINGS = tuple(s for s in SWEEP.settings if s.train_size is None)
# the training-set-size axis: the settings with a data.train_size, then the same data/model on the whole split
_SIZED = sorted((s for s in SWEEP.settings if s.train_size is not None), key=lambda s: s.train_size)
if len({(s.data, s.model) for s in _SIZED}) > 1:
    raise ValueError(f"conf/experiment/{EXPERIMENT}.yaml: the settings with a data.train_size must share one "
                     f"data and model; got {', '.join(s.label for s in _SIZED)}")
SIZE_DATA, SIZE_MODEL = (_SIZED[0].data, _SIZED[0].model) if _SIZED else (None, None)
SIZES = tuple(s.train_size for s in _SIZED) + tuple(
    s.wanted_size for s in MAIN_SETTINGS if (s.data, s.model) == (SIZE_DATA, SIZE_MODEL))
SIZE_SETTINGS = tuple(Setting(SIZE_DATA, SIZE_MODEL, n) for n in SIZES)

# The tuned study (issue 16): its sweeps (the MLP settings, then the conv settings with their smaller
# declared budget), whose records sit in the sibling folder TUNED; the checks beside it, each its own
# experiment folder next to this one (found from the study folder's parent, never from the package)
TUNED_EXPERIMENTS = ("dropout_vs_early_stopping_tuned", "dropout_vs_early_stopping_tuned_conv")
TUNED_SETTINGS = tuple(s for e in TUNED_EXPERIMENTS for s in read_settings(e))
TUNED, AGREEMENT = "dropout_vs_early_stopping_tuned", "dropout_vs_early_stopping_replicas"
SIZE_AXIS, BASELINES, TABLE9 = "dropout_size_equal_steps", "mnist1d_baselines", "srivastava_table9"
LATE = 0.8  # convergence: a best validation epoch past this share of the epoch cap may still be improving

# MNIST-1D benchmark (Greydanus & Kobak 2020), test accuracy: (model, what, as published, low, high);
# a single published number ("~32%") is compared as that number +- 2 percentage points. Each model's
# runs are those of the sanity sweep or of a main setting on the sanity sweep's data.
PUBLISHED = (
    ("logreg", "logistic regression", "~32%", 0.30, 0.34),
    ("mlp", "MLP", "64–68%", 0.64, 0.68),
    ("resmlp", "MLP with residual hidden layer (their MLPBase)", "64–68%", 0.64, 0.68),
    ("cnn1d", "CNN", "92–94%", 0.92, 0.94),
)
SANITY_DATA = SWEEP.sanity[0].data
_unswept = [m for m, *_ in PUBLISHED if Setting(SANITY_DATA, m) not in (*SWEEP.sanity, *MAIN_SETTINGS)]
if _unswept:
    raise ValueError(f"conf/experiment/{EXPERIMENT}_sanity.yaml: no sweep runs {', '.join(_unswept)} on {SANITY_DATA}, "
                     f"which the sanity section compares with published numbers")

# --------------------------------------------------------------------------------------
# records -> runs with the study's columns
# --------------------------------------------------------------------------------------

def _float(v: Any) -> float:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


# per-run columns read from the record itself (NaN when absent): its `extra` and `steps`
RECORD_COLUMNS: dict[str, Callable[[dict], Any]] = {
    "steps": lambda r: r.get("steps"),
    "mech_corr": lambda r: lookup(r, "extra", "mechanism", "summary", "mean_abs_corr"),
    "mech_sparsity": lambda r: lookup(r, "extra", "mechanism", "summary", "sparsity"),
    "mech_unit_norm": lambda r: lookup(r, "extra", "mechanism", "summary", "unit_norm_mean"),
    "mech_dead_units": lambda r: lookup(r, "extra", "mechanism", "summary", "dead_units"),
    "ece": lambda r: lookup(r, "extra", "mechanism", "ece"),
    "entropy": lambda r: lookup(r, "extra", "mechanism", "entropy"),
    "mc_entropy": lambda r: lookup(r, "extra", "mc_entropy_test"),
}


def effective_train_size(data: str, config: Any) -> int | None:
    """`data.train_size` of the run's config, or the whole split's size when it is null."""
    ts = lookup(config, "data", "train_size")
    if ts is None or isinstance(ts, bool):
        return FULL_TRAIN_SIZE.get(data)
    return int(ts)


def _record(path: str) -> dict:
    try:
        return read_record(path)
    except ValueError:
        return {}


def load_study_runs(experiment_dir: str | Path) -> pd.DataFrame:
    """One row per readable record below `experiment_dir` (regbench.reporting.collect.load_runs) plus
    `train_size` (effective), `gap` (train/acc - test/acc) and the RECORD_COLUMNS."""
    runs = load_runs([Path(experiment_dir)]).runs.copy()
    records = [_record(p) for p in runs["path"]]
    runs["train_size"] = pd.Series([effective_train_size(d, c) for d, c in zip(runs["data"], runs["config"])],
                                   index=runs.index, dtype=object)
    runs["gap"] = runs["train/acc"] - runs["test/acc"]
    for col, get in RECORD_COLUMNS.items():
        runs[col] = pd.Series([_float(get(r)) for r in records], index=runs.index, dtype=float)
    return runs


# --------------------------------------------------------------------------------------
# the sections
# --------------------------------------------------------------------------------------

@dataclass
class Study:
    experiment_dir: Path
    report: Report
    runs: pd.DataFrame
    main: list[Context]
    sizes: list[Context]
    verdicts: dict[str, str] = field(default_factory=dict)   # claim -> category
    fields: dict[str, str] = field(default_factory=dict)     # template placeholders
    readme: Path | None = None
    files: list[Path] = field(default_factory=list)
    size_series: dict[str, list[tuple[int, float, float, float]]] = field(default_factory=dict)
    families: dict[str, dict] = field(default_factory=dict)  # claim -> its Holm family of Comparisons
    tuned: "Study | None" = None  # the tuned study's claims (build_study), whose verdicts answer them


def _claim1(study: Study) -> None:
    rep, f = study.report, study.fields
    rows, outcomes = [], []
    fam1 = study.families["claim1_accuracy"] = accuracy_family(study.main, (DROPOUT,))
    for ctx in study.main:
        diff, p, outcome = family_cells(fam1, (DROPOUT, ctx.setting))
        outcomes.append(outcome)
        rows.append([ctx.setting.label, f"{n_ok(rep, ctx, BASELINE)} / {n_ok(rep, ctx, DROPOUT)}",
                     acc_cell(rep, ctx, BASELINE), acc_cell(rep, ctx, DROPOUT), diff, p, outcome])
    f["claim1_table"] = md_table(["setting", "ok runs none / dropout", "none: test acc % [95% CI]",
                                  "dropout: test acc % [95% CI]", "dropout − none, pp [95% CI]", "p_holm",
                                  "outcome"], rows)
    f["claim1_verdict"] = verdict_line(outcomes, "better", "worse", "test accuracy vs none")
    study.verdicts["claim1_accuracy"] = tally(outcomes)[0]

    # the train-test gap: lower is better
    fam = compare_family([((ctx.setting,), vals_or_none(ctx, DROPOUT, "gap"), vals_or_none(ctx, BASELINE, "gap"),
                           False) for ctx in study.main])
    rows, gap_outcomes = [], []
    for ctx in study.main:
        c = fam[(ctx.setting,)]
        gap_outcomes.append(c.outcome)
        r = c.result
        gaps = [per_arm_row(study.report, ctx, arm) for arm in (BASELINE, DROPOUT)]
        rows.append([ctx.setting.label, *(NOT_RUN if g is None else fmt_acc(g["train_minus_test_acc_mean"])
                                          for g in gaps),
                     fmt_pp(r.get("diff_mean"), r.get("ci_low"), r.get("ci_high")) if r else NOT_RUN,
                     fmt_p(c.p_holm), rename_outcome(c.outcome, "smaller gap", "larger gap")])
    f["claim1_gap_table"] = md_table(["setting", "none: train − test acc, pp", "dropout: train − test acc, pp",
                                      "dropout − none, pp [95% CI]", "p_holm (this table)", "outcome"], rows)
    f["claim1_gap_verdict"] = verdict_line(gap_outcomes, "smaller gap", "larger gap",
                                           "train–test accuracy gap vs none")
    study.verdicts["claim1_gap"] = tally(gap_outcomes)[0]

    rows = []
    famv = study.families["claim1_variants"] = accuracy_family(study.main, DROPOUT_VARIANTS)
    for ctx in study.main:
        for arm in DROPOUT_VARIANTS:
            diff, p, outcome = family_cells(famv, (arm, ctx.setting))
            rows.append([ctx.setting.label, arm, acc_cell(rep, ctx, arm), diff, p, outcome])
    f["claim1_variants_table"] = md_table(["setting", "arm", "test acc % [95% CI]", "arm − none, pp [95% CI]",
                                           "p_holm", "outcome"], rows, right={2, 3, 4})


MECHANISM_METRICS = (
    # column, label, higher_is_better (for "dropout is doing what the claim says"), better, worse
    ("mech_corr", "mean |correlation| between hidden units", False, "lower", "higher"),
    ("mech_sparsity", "activation sparsity (fraction of inactive outputs)", True, "sparser", "denser"),
)


def _has_mechanism(study: Study) -> bool:
    return bool(study.runs["mech_corr"].notna().any() or study.runs["mech_sparsity"].notna().any())


def _claim2(study: Study) -> None:
    f = study.fields
    specs = []
    for col, _, hib, *_ in MECHANISM_METRICS:
        for ctx in study.main:
            a, b = vals_or_none(ctx, DROPOUT, col), vals_or_none(ctx, BASELINE, col)
            if a is not None and b is not None and (not a or not b):
                a = b = NOT_MEASURED  # the arms ran, but without mechanism measurements
            specs.append(((col, ctx.setting), a, b, hib))
    fam = compare_family(specs)
    tables, verdicts = [], []
    for col, label, hib, better, worse in MECHANISM_METRICS:
        rows, outcomes = [], []
        for ctx in study.main:
            c = fam[(col, ctx.setting)]
            outcomes.append(c.outcome)
            r = c.result
            rows.append([ctx.setting.label,
                         mean_ci_cell(vals_or_none(ctx, BASELINE, col) or {}),
                         mean_ci_cell(vals_or_none(ctx, DROPOUT, col) or {}),
                         fmt_diff(r.get("diff_mean"), r.get("ci_low"), r.get("ci_high")) if r else NOT_RUN,
                         fmt_p(c.p_holm), rename_outcome(c.outcome, better, worse)])
        tables.append(f"**{label[0].upper() + label[1:]}** (eval mode, test set, averaged over the hidden "
                      f"layers):\n\n" + md_table(["setting", "none [95% CI]", "dropout [95% CI]",
                                                  "dropout − none [95% CI]", "p_holm (both tables)", "outcome"],
                                                 rows))
        verdicts.append(f"- {label}: " + verdict_line(outcomes, better, worse, f"dropout vs none, {better} = "
                                                      f"as the claim predicts"))
        study.verdicts[f"claim2_{col}"] = tally(outcomes)[0]
    if not _has_mechanism(study):
        f["claim2_tables"] = ("Not measured: no record has `extra.mechanism` (see `regbench.analysis.measure`).")
    else:
        f["claim2_tables"] = "\n\n".join(tables)
    f["claim2_verdict"] = "\n".join(verdicts)


def _claim3(study: Study) -> None:
    rep, f = study.report, study.fields
    rows, acc_outcomes, halt_outcomes = [], [], []
    fam3 = study.families["claim3_accuracy"] = accuracy_family(study.main, (EARLY,))
    for ctx in study.main:
        diff, p, outcome = family_cells(fam3, (EARLY, ctx.setting))
        acc_outcomes.append(outcome)
        es, base = per_arm_row(rep, ctx, EARLY), per_arm_row(rep, ctx, BASELINE)
        max_epochs = ctx.config_value("trainer", "max_epochs")
        if es is None:
            halt_outcomes.append(NOT_RUN)
            stopped = epochs = best = secs = NOT_RUN
        else:
            label = ctx.arm(EARLY)
            ok = ctx.runs[(ctx.runs["arm"] == label) & (ctx.runs["status"] == "ok")]
            k, n = int(ok["stopped_early"].sum()), len(ok)
            halt_outcomes.append(NOT_RUN if n == 0 else ("better" if 2 * k > n else "worse"))
            stopped = f"{k} / {n}"
            base_epochs = fmt_num(base["epochs_trained_mean"], 1) if base is not None else "–"
            epochs = f"{base_epochs} / {fmt_num(es['epochs_trained_mean'], 1)}"
            best = fmt_num(es["best_epoch_mean"], 1)
            base_secs = fmt_num(base["train_seconds_mean"], 1) if base is not None else "–"
            secs = f"{base_secs} / {fmt_num(es['train_seconds_mean'], 1)}"
        rows.append([ctx.setting.label, acc_cell(rep, ctx, BASELINE), acc_cell(rep, ctx, EARLY), diff, p, outcome,
                     stopped, "–" if max_epochs is None else str(max_epochs), epochs, best, secs])
    f["claim3_table"] = md_table(["setting", "none: test acc %", "early_stop: test acc %", "early_stop − none, pp",
                                  "p_holm", "outcome", "runs stopped early", "max epochs",
                                  "epochs trained none / early_stop", "best epoch (early_stop)",
                                  "fit seconds none / early_stop"], rows)
    cat, n, k, _ = tally(halt_outcomes)
    halt = cat
    f["claim3_halt_verdict"] = (f"**{halt}** (halting: early stopping stopped before the epoch limit in most of "
                                f"its runs on {k} of {n} settings, and did not on {n - k})" if n else f"**{NOT_RUN}**")
    f["claim3_verdict"] = verdict_line(acc_outcomes, "better", "worse", "test accuracy of early_stop vs none")
    study.verdicts["claim3_halt"] = halt
    study.verdicts["claim3_accuracy"] = tally(acc_outcomes)[0]


def _claim4(study: Study) -> None:
    rep, f = study.report, study.fields
    specs = []
    for ctx in study.main:
        acc = lambda name: vals_or_none(ctx, name, METRIC)  # noqa: E731
        specs += [(("h2h", ctx.setting), acc(DROPOUT), acc(EARLY), True),
                  (("combo-dropout", ctx.setting), acc(COMBO), acc(DROPOUT), True),
                  (("combo-early", ctx.setting), acc(COMBO), acc(EARLY), True)]
    fam = compare_family(specs)

    def cell(key) -> tuple[str, str]:
        c = fam[key]
        r = c.result
        if not r:
            return NOT_RUN, "–"
        return fmt_pp(r["diff_mean"], r["ci_low"], r["ci_high"]), fmt_p(c.p_holm)

    rows, winners = [], []
    for ctx in study.main:
        d, e = per_arm_row(rep, ctx, DROPOUT), per_arm_row(rep, ctx, EARLY)
        overlap = "–"
        if d is not None and e is not None and not is_nan(d[f"{T}_ci95_low"]) and not is_nan(e[f"{T}_ci95_low"]):
            disjoint = d[f"{T}_ci95_low"] > e[f"{T}_ci95_high"] or e[f"{T}_ci95_low"] > d[f"{T}_ci95_high"]
            overlap = "no" if disjoint else "yes"
        c = fam[("h2h", ctx.setting)]
        winner = {"better": "dropout", "worse": "early stopping"}.get(c.outcome, c.outcome)
        winners.append(c.outcome)
        diff, p = cell(("h2h", ctx.setting))
        rows.append([ctx.setting.label, acc_cell(rep, ctx, DROPOUT), acc_cell(rep, ctx, EARLY), overlap, diff, p,
                     winner])
    f["claim4_table"] = md_table(["setting", "dropout: test acc % [95% CI]", "early_stop: test acc % [95% CI]",
                                  "CIs overlap", "dropout − early_stop, pp [95% CI]", "p_holm (both tables)",
                                  "better"], rows)
    cat, n, k, j = tally(winners)
    e = winners.count("equivalent")
    f["claim4_verdict"] = (f"dropout better on {k} of {n} tested settings, early stopping better on {j}, "
                           f"equivalent on {e}, inconclusive on {n - k - j - e}" if n else NOT_RUN)
    study.verdicts["claim4_head_to_head"] = f"{k}/{j}/{n}"

    rows, combo = [], []
    for ctx in study.main:
        a, pa = cell(("combo-dropout", ctx.setting))
        b, pb = cell(("combo-early", ctx.setting))
        o1, o2 = fam[("combo-dropout", ctx.setting)].outcome, fam[("combo-early", ctx.setting)].outcome
        if o1 in TESTED and o2 in TESTED:
            both = ("better" if o1 == o2 == "better" else "worse" if "worse" in (o1, o2)
                    else "equivalent" if o1 == o2 == "equivalent" else "inconclusive")
        else:
            both = NOT_RUN if NOT_RUN in (o1, o2) else "not testable"
        combo.append(both)
        rows.append([ctx.setting.label, acc_cell(rep, ctx, COMBO), a, pa, b, pb,
                     rename_outcome(both, "beats both", "worse than one")])
    f["claim4_combo_table"] = md_table(["setting", "dropout_early_stop: test acc % [95% CI]",
                                        "combined − dropout, pp [95% CI]", "p_holm",
                                        "combined − early_stop, pp [95% CI]",
                                        "p_holm", "outcome"], rows)
    f["claim4_combo_verdict"] = verdict_line(combo, "beats both", "worse than at least one",
                                             "dropout + early stopping vs each alone")
    study.verdicts["claim4_combo"] = tally(combo)[0]


def _claim5(study: Study) -> None:
    rep, f = study.report, study.fields
    rows, series = [], {DROPOUT: [], EARLY: []}
    fam5 = study.families["claim5"] = accuracy_family(study.sizes, (DROPOUT,))
    fam5e = study.families["claim5_early_stop"] = accuracy_family(study.sizes, (EARLY,))
    for ctx in study.sizes:
        diff, p, outcome = family_cells(fam5, (DROPOUT, ctx.setting))
        rows.append([str(ctx.setting.train_size), f"{n_ok(rep, ctx, BASELINE)} / {n_ok(rep, ctx, DROPOUT)}",
                     acc_cell(rep, ctx, BASELINE), acc_cell(rep, ctx, DROPOUT), diff, p, outcome,
                     family_cells(fam5e, (EARLY, ctx.setting))[0]])
        for arm, fam in ((DROPOUT, fam5), (EARLY, fam5e)):
            r = fam[(arm, ctx.setting)].result
            if r and not is_nan(r["diff_mean"]):
                series[arm].append((ctx.setting.train_size, float(r["diff_mean"]),
                                    float(r["ci_low"]), float(r["ci_high"])))
    f["claim5_table"] = md_table(["train size", "ok runs none / dropout", "none: test acc % [95% CI]",
                                  "dropout: test acc % [95% CI]", "dropout − none, pp [95% CI]", "p_holm", "outcome",
                                  "early_stop − none, pp [95% CI]"], rows)

    # the trend: per-seed differences at the smallest vs the largest size with >= 2 paired seeds
    diffs = []
    for ctx in study.sizes:
        a, b = ctx.values(DROPOUT, METRIC), ctx.values(BASELINE, METRIC)
        shared = sorted(set(a) & set(b), key=str)
        if len(shared) >= 2:
            diffs.append((ctx.setting.train_size, np.array([a[s] - b[s] for s in shared], float)))
    if len(diffs) < 2:
        f["claim5_trend"] = (f"The trend needs at least 2 sizes with at least 2 paired seeds; "
                             f"{len(diffs)} available.")
        f["claim5_verdict"] = f"**{NOT_RUN}**"
        study.verdicts["claim5"] = NOT_RUN
    else:
        (n_small, small), (n_large, large) = diffs[0], diffs[-1]
        with stats._quiet():
            rho = float(sps.spearmanr([n for n, _ in diffs], [d.mean() for _, d in diffs]).statistic) \
                if len(diffs) >= 3 else math.nan
        gap, p, p_eq, cat = size_trend(small, large)
        f["claim5_trend"] = (
            f"Benefit of dropout (mean per-seed dropout − none) at n={n_small}: {fmt_pp(small.mean())} pp "
            f"({small.size} seeds); at n={n_large}: {fmt_pp(large.mean())} pp ({large.size} seeds); "
            f"difference {fmt_pp(gap)} pp, Welch's t-test p = {fmt_p(p)}, TOST (±{100 * stats.EQUIVALENCE_MARGIN:g} pp) "
            f"p = {fmt_p(p_eq)}. "
            f"Spearman correlation of the mean difference with the training-set size over the "
            f"{len(diffs)} sizes: {fmt_num(rho, 2)} (descriptive only).")
        f["claim5_verdict"] = (f"**{cat}** (dropout's benefit at the smallest size minus that at the largest: "
                               f"{fmt_pp(gap)} pp, p = {fmt_p(p)})")
        study.verdicts["claim5"] = cat
    study.fields["claim5_plot"] = (
        f"![dropout − none vs training-set size]({SIZE_PLOT})" if series[DROPOUT]
        else f"No plot: no training-set size with both a `{DROPOUT}` and a `{BASELINE}` arm.")
    study.size_series = series


def size_trend(small: np.ndarray, large: np.ndarray) -> tuple[float, float, float, str]:
    """Claim 5's rule on the per-seed benefits of dropout at the smallest and the largest size: (benefit
    gap, Welch p, TOST p, category): supported / contradicted when Welch's p < alpha, no effect when
    TOST shows the gap within the margin, else inconclusive."""
    with stats._quiet():
        p = float(sps.ttest_ind(small, large, equal_var=False).pvalue)
    p_eq = stats.tost_pvalue(small, large, stats.EQUIVALENCE_MARGIN, paired=False)
    gap = float(small.mean() - large.mean())
    if not is_nan(p) and p < stats.ALPHA:
        return gap, p, p_eq, "supported" if gap > 0 else "contradicted"
    return gap, p, p_eq, "no effect" if not is_nan(p_eq) and p_eq < stats.ALPHA else "inconclusive"


def write_size_plot(series: dict[str, list[tuple[int, float, float, float]]], path: Path) -> Path | None:
    """Difference vs `none` (pp, with 95% CIs) against the training-set size; None when nothing to draw."""
    if not any(series.values()):
        path.unlink(missing_ok=True)
        return None
    import matplotlib
    from matplotlib.figure import Figure

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    sizes = sorted({n for pts in series.values() for n, *_ in pts})
    shift = {DROPOUT: 0.97, EARLY: 1.03}
    for i, (arm, pts) in enumerate(series.items()):
        if not pts:
            continue
        x = np.array([n * shift.get(arm, 1.0) for n, *_ in pts])
        d = np.array([100 * v for _, v, _, _ in pts])
        lo = np.array([100 * v for _, _, v, _ in pts])
        hi = np.array([100 * v for _, _, _, v in pts])
        yerr = np.nan_to_num(np.vstack([d - lo, hi - d]), nan=0.0)
        ax.errorbar(x, d, yerr=yerr, marker="o", capsize=3, color=cycle[i % len(cycle)], label=f"{arm} − none",
                    lw=2.0 if arm == DROPOUT else 1.0, alpha=1.0 if arm == DROPOUT else 0.6)
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel(f"training-set size ({SIZE_DATA}/{SIZE_MODEL})")
    ax.set_ylabel("test accuracy difference (pp)")
    ax.set_title("Effect vs training-set size, 95% bootstrap CIs")
    ax.legend(loc="best", fontsize="small")
    from regbench.reporting.plots import _save

    _save(fig, path)  # PNG and PDF
    return path


# --------------------------------------------------------------------------------------
# claim 6: the seed document's Dropout(module) wrapper, and Dropped(module), what it meant
# --------------------------------------------------------------------------------------

class Dropped(DropoutLayer):
    """Wrap any module and apply inverted dropout to its output: ``dropout(module(x), p)``.

    This is what the seed document's ``Dropout(module)`` wrapper meant to do; that one
    returned ``self.module(x)`` unchanged, so it regularised nothing (claim 6).
    """

    def __init__(self, module: nn.Module, p: float = 0.5, mc: bool = False):
        super().__init__(p, mc)
        self.module = module

    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = self.module(*args, **kwargs)
        if not self.active or (self._p == 0.0 and not self.stacked):
            return y
        return dropout(y, self.rate if self.stacked else self._p, True)


SEED_DOC_SNIPPET = '''class Dropout(nn.Module):
    def __init__(self, module):
        super(Dropout, self).__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)'''


def seed_doc_dropout_check(n: int = 64, width: int = 16, p: float = 0.5) -> dict[str, Any]:
    """Run the seed document's Dropout class and regbench's `Dropped` wrapper in training mode on the
    same input (fixed seed, the global generator left untouched); count what each changes."""
    ns: dict[str, Any] = {"nn": nn}
    exec(SEED_DOC_SNIPPET, ns)  # the document's code, verbatim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inner = nn.Linear(width, width)
        x = torch.randn(n, width)
        with torch.no_grad():
            ref = inner(x)
            doc = ns["Dropout"](inner).train()(x)
            ours = Dropped(inner, p=p).train()(x)
    total = ref.numel()
    return {"outputs": total, "doc_changed": int((doc != ref).sum()), "doc_zeroed": int((doc == 0).sum()),
            "ours_zeroed": int((ours == 0).sum()), "ours_changed": int((ours != ref).sum()), "p": p}


def _claim6(study: Study) -> None:
    r = seed_doc_dropout_check()
    f = study.fields
    f["claim6_snippet"] = SEED_DOC_SNIPPET
    f["claim6_measured"] = (
        f"Run here on a {r['outputs']}-element training-mode output of `nn.Linear(16, 16)` (seed 0): the "
        f"document's class changed {r['doc_changed']} of {r['outputs']} outputs ({r['doc_zeroed']} zeros); "
        f"regbench's `Dropped(module, p={r['p']:g})` zeroed {r['ours_zeroed']} of {r['outputs']} "
        f"({fmt_num(r['ours_zeroed'] / r['outputs'], 3)}, expected {r['p']:g}).")
    confirmed = r["doc_changed"] == 0
    f["claim6_verdict"] = ("**confirmed: the document's Dropout class does nothing**" if confirmed
                           else "**not confirmed: the document's class changed its module's output**")
    study.verdicts["claim6"] = "confirmed" if confirmed else "not confirmed"


def _sanity_contexts(study: Study) -> list[Context]:
    return [resolve(study.runs, Setting(SANITY_DATA, model)) for model, *_ in PUBLISHED]


def _sanity(study: Study) -> None:
    rep, f = study.report, study.fields
    rows = []
    for (model, what, published, lo, hi), ctx in zip(PUBLISHED, _sanity_contexts(study)):
        r = per_arm_row(rep, ctx, BASELINE)
        if r is None:
            rows.append([f"`{model}` ({what})", published, NOT_RUN, "0", "–", "–", NOT_RUN])
            continue
        m, cl, ch = r[f"{T}_mean"], r[f"{T}_ci95_low"], r[f"{T}_ci95_high"]
        a, b = (m, m) if is_nan(cl) else (cl, ch)
        where = "–" if is_nan(m) else ("below" if b < lo else "above" if a > hi else "consistent")
        steps = ctx.values(BASELINE, "steps")
        max_epochs = ctx.config_value("trainer", "max_epochs")
        rows.append([f"`{model}` ({what})", published, fmt_acc(m, cl, ch), str(int(r["seeds_ok"])),
                     "–" if max_epochs is None else str(max_epochs),
                     f"{np.mean(list(steps.values())):.0f}" if steps else "–", where])
    f["sanity_table"] = md_table(["regbench model", "published test acc", "regbench `none`: test acc % [95% CI]",
                                  "ok runs", "max epochs", "mean steps", "vs published"], rows,
                                 right={2, 3, 4, 5})
    ctx = resolve(study.runs, Setting("mnist1d", "mlp"))
    if ctx.ran:
        steps = ctx.values(BASELINE, "steps")
        steps_txt = f"{np.mean(list(steps.values())):.0f}" if steps else "–"
        f["sanity_protocol"] = (
            f"regbench (from the records of mnist1d/mlp): {ctx.config_value('optim', 'name')} at lr "
            f"{ctx.config_value('optim', 'lr')}, batch {ctx.config_value('optim', 'batch_size')}, "
            f"up to {ctx.config_value('trainer', 'max_epochs')} epochs of shuffled batches on "
            f"{ctx.setting.wanted_size} training examples after carving a "
            f"{ctx.config_value('data', 'val_size')}-example validation split; the `none` runs took "
            f"{steps_txt} optimizer steps on average. The other models' epoch limits and steps are in the "
            f"table above.")
    else:
        f["sanity_protocol"] = f"regbench protocol: {NOT_RUN} (no mnist1d/mlp records)."


def _calibration(study: Study) -> None:
    f = study.fields
    if not study.runs["ece"].notna().any():
        f["calibration_table"] = "Not measured: no record has `extra.mechanism` (see `regbench.analysis.measure`)."
    else:
        rows = []
        for ctx in study.main:
            for arm in ARMS:
                if ctx.arm(arm) is None:
                    if arm in (BASELINE, DROPOUT, EARLY):
                        rows.append([ctx.setting.label, arm, NOT_RUN, "–", "–", "–", "–"])
                    continue
                ece = ctx.values(arm, "ece")
                rows.append([ctx.setting.label, arm, mean_ci_cell(ece, 4), fmt_num(mean_of(ctx, arm, "entropy"), 3),
                             fmt_num(mean_of(ctx, arm, "mech_corr"), 3),
                             fmt_num(mean_of(ctx, arm, "mech_sparsity"), 3),
                             fmt_num(mean_of(ctx, arm, "mech_unit_norm"), 3)])
        f["calibration_table"] = md_table(["setting", "arm", "ECE (15 bins) [95% CI]", "mean entropy (nats)",
                                           "mean abs corr", "sparsity", "mean unit weight norm"], rows,
                                          right={2, 3, 4, 5, 6})
    mc = study.runs[study.runs["mc_entropy"].notna() & (study.runs["status"] == "ok")]
    if mc.empty:
        f["mc_table"] = "No MC-dropout runs in these records (no `extra.mc_entropy_test`)."
    else:
        rows = []
        for (data, model, gh, arm), g in mc.groupby(["data", "model", "group_hash", "arm"], sort=True):
            vals = dict(zip(g["seed"], g["mc_entropy"]))
            rows.append([f"{data}/{model}", gh, arm, str(len(g)), mean_ci_cell(vals, 3)])
        f["mc_table"] = md_table(["data/model", "config", "arm", "ok runs", "MC predictive entropy (nats) [95% CI]"],
                                 rows, right={3, 4})


# --------------------------------------------------------------------------------------
# the tuned study (the verdicts), what tuning changed, and the checks beside it
# --------------------------------------------------------------------------------------

def _has_records(folder: Path) -> bool:
    return folder.is_dir() and any(folder.rglob("results.json"))


def _sibling_module(name: str):
    """The analysis module of the experiment `name` beside this one (its code, in this checkout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_analysis", HERE.parent / name / "analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sibling_report(folder: Path) -> Report | None:
    """The generic tables of a sibling folder, in memory (its files are `make tables`' to write); None
    when none of its records is readable."""
    import tempfile

    from regbench.reporting.report import NoRunsError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return write_report([folder], Path(tmp), baseline=BASELINE, metric=METRIC, plots=False)
        except NoRunsError:
            return None


def tuned_study(folder: Path, fixed: Study) -> Study:
    """Claims 1-4 and calibration on the final-seed records of the tuned study in `folder` (each arm's
    chosen config on fresh seeds); without records every cell reads "not run"."""
    runs, report = fixed.runs.iloc[0:0], fixed.report
    found = _sibling_report(folder) if _has_records(folder) else None
    if found is not None:
        from regbench.reporting.tuning import roles

        report, runs = found, load_study_runs(folder)
        runs = runs[roles(runs) == "final"]
    study = Study(experiment_dir=folder, report=report, runs=runs,
                  main=[resolve(runs, s) for s in TUNED_SETTINGS], sizes=[])
    for section in (_claim1, _claim2, _claim3, _claim4, _calibration):
        section(study)
    return study


def _pairwise_rows(report: Report, contexts: list[Context]) -> dict[tuple[str, str, Any, str], pd.Series]:
    """(data, model, training-set size, regularizer) -> its row against `none` in the pairwise table
    (Holm over the arms of its setting), in the config each context stands for."""
    pw, out = report.pairwise, {}
    for ctx in contexts:
        if not ctx.ran:
            continue
        mine = pw[(pw["data"] == ctx.setting.data) & (pw["model"] == ctx.setting.model)
                  & (pw["config"] == ctx.group_hash) & (pw["baseline"] == BASELINE)]
        for _, r in mine.iterrows():
            if r["regularizer"] == ctx.arm(r["regularizer"].split(" (")[0]):  # the arm the claims read
                out[(ctx.setting.data, ctx.setting.model, ctx.setting.wanted_size, r["regularizer"].split(" (")[0])] = r
    return out


def _diff_cell(r: pd.Series) -> str:
    return fmt_pp(r[f"{T}_diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"])


def _setting_of(ctxs: list[Context], data: str, model: str, size: Any) -> Context | None:
    return next((c for c in ctxs if (c.setting.data, c.setting.model, c.setting.wanted_size) == (data, model, size)
                 and c.ran), None)


def _seeds_and_lr(study: Study) -> str:
    ran = [c for c in study.main if c.ran]
    seeds = sorted({len(set(c.runs[c.runs["arm"] == a]["seed"])) for c in ran for a in c.runs["arm"].unique()})
    lrs = sorted({lookup(cfg, "optim", "lr") for c in ran for cfg in c.runs["config"]} - {None})
    return (f"{'-'.join(map(str, (seeds[0], seeds[-1]) if seeds[0] != seeds[-1] else seeds[:1]))} seeds an arm, "
            f"Adam lr {', '.join(_val(v) for v in lrs[:3])}{' ...' if len(lrs) > 3 else ''}") if seeds else "–"


def _config_of(ctx: Context, arm: str) -> dict | None:
    label = ctx.arm(arm)
    return None if label is None else ctx.runs[ctx.runs["arm"] == label]["config"].iloc[0]


def _values(ctx: Context, arm: str, keys: list[str] | None = None) -> str:
    """Arm `arm`'s values here of config `keys` (None: the keys the tuned protocol searched for it)."""
    from regbench.reporting.tuning import tuned_keys

    c = _config_of(ctx, arm)
    if c is None:
        return "–"
    return ", ".join(f"{k.split('.')[-1]} {_val(lookup(c, *k.split('.')))}"
                     for k in (tuned_keys(c) if keys is None else keys))


def _val(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def flips_section(fixed: Study, tuned: Study) -> str:
    """Every (setting, arm) vs none at fixed strength and tuned, side by side, with what tuning chose."""
    from regbench.reporting.tuning import tuned_keys

    fx, tu = _pairwise_rows(fixed.report, fixed.main), _pairwise_rows(tuned.report, tuned.main)
    keys = [k for k in fx if k in tu]
    if not keys:
        return f"{NOT_RUN}: no setting has both fixed-strength and tuned records."
    rows, changed, reversals = [], 0, 0
    for data, model, size, arm in keys:
        key = (data, model, size, arm)
        a, b = fx[key]["verdict"], tu[key]["verdict"]
        tctx, fctx = _setting_of(tuned.main, data, model, size), _setting_of(fixed.main, data, model, size)
        tuned_config = _config_of(tctx, arm)
        searched = tuned_keys(tuned_config) if tuned_config is not None else []
        flip = a != b
        changed += flip
        reversals += {a, b} == {"better", "worse"}
        rows.append([tctx.setting.label, arm, _diff_cell(fx[key]), a, _diff_cell(tu[key]),
                     b, "**yes**" if flip else "no", _values(fctx, arm, searched), _values(tctx, arm)])
    table = md_table(["setting", "arm", "fixed: arm − none, pp [95% CI]", "fixed", "tuned: arm − none, pp [95% CI]",
                      "tuned", "changed", "fixed strength", "tuned choice"], rows)
    unpaired = sorted({tuned_ctx.setting.label for tuned_ctx in tuned.main if tuned_ctx.ran}
                      - {_setting_of(tuned.main, *k[:3]).setting.label for k in keys})
    return (f"{changed} of {len(rows)} outcomes against `none` changed when every arm (and `none`) was tuned "
            f"with the same budget; {reversals} of them reversed (`better` against `worse`). Fixed strength: "
            f"{_seeds_and_lr(fixed)}; tuned: {_seeds_and_lr(tuned)} (the last two columns: the searched keys, "
            f"at fixed strength and as chosen). Outcomes as in each folder's pairwise.md: Holm over the arms of "
            f"a setting (the claim tables above hold their own families, so a cell can differ from its claim's)."
            + (f" Tuned settings without a fixed-strength twin of the same training-set size: "
               f"{', '.join(unpaired)}." if unpaired else "") + "\n\n" + table)


def tuned_protocol_section(tuned: Study) -> str:
    """Per tuned setting, the budget its records declare (protocol.*) and the training it got."""
    rows = []
    for ctx in tuned.main:
        if not ctx.ran:
            rows.append([ctx.setting.label, NOT_RUN, "–", "–", "–", "–"])
            continue
        get = lambda *k: ctx.config_value("protocol", *k)  # noqa: E731
        seeds = sorted({int(x) for x in ctx.runs["seed"]})
        rows.append([ctx.setting.label, f"{get('trials')} x {get('tune_seeds')} ({get('sampler')}, on "
                     f"{get('metric')})", f"{len(seeds)} ({seeds[0]}–{seeds[-1]})",
                     str(ctx.setting.wanted_size), str(ctx.config_value("trainer", "max_epochs")),
                     str(ctx.config_value("optim", "batch_size"))])
    return md_table(["setting", "budget per arm: trials x seeds", "final seeds", "train size", "epoch cap", "batch"],
                    rows, right={3, 4, 5})


def convergence_section(tuned: Study) -> str:
    """Per tuned setting and arm: the share of ok final runs whose best validation epoch came after
    LATE of the epoch cap (their curves may still have been rising when the cap stopped them)."""
    rows, late_cells = [], 0
    for ctx in tuned.main:
        if not ctx.ran:
            rows.append([ctx.setting.label, "–", NOT_RUN, "–", "–"])
            continue
        cap = ctx.config_value("trainer", "max_epochs")
        for arm in ARMS:
            label = ctx.arm(arm)
            if label is None:
                continue
            ok = ctx.runs[(ctx.runs["arm"] == label) & (ctx.runs["status"] == "ok")]
            late = float(np.mean(ok["best_epoch"].to_numpy(float) + 1 > LATE * cap)) if len(ok) else math.nan
            late_cells += late > 0.5
            rows.append([ctx.setting.label, arm, str(cap), f"{len(ok)}",
                         "–" if is_nan(late) else f"{100 * late:.0f}%" + (" **(most)**" if late > 0.5 else "")])
    return (f"Best validation epoch past {LATE:.0%} of the cap, share of each arm's ok final runs: "
            f"{late_cells} (setting, arm) cell(s) have most of their runs there.\n\n"
            + md_table(["setting", "arm", "epoch cap", "ok runs", f"best epoch past {LATE:.0%} of the cap"], rows,
                       right={2, 3, 4}))


def claim5_tuned(size_dir: Path) -> tuple[str, str, str]:
    """(table and trend, verdict, category) of claim 5 from the size axis's tuned final records, with
    the fixed study's rule (benefit at the smallest size against the largest, Welch, TOST)."""
    if not _has_records(size_dir):
        return f"{NOT_RUN}: no records in {size_dir.name}/.", f"**{NOT_RUN}**", NOT_RUN
    ax = _sibling_module(SIZE_AXIS)
    runs = ax.runs_of(size_dir)
    rows, gains = [], {}
    for n in sorted(set(runs["size"])):
        at = runs[runs["size"] == n]
        g = ax.gains(ax.per_seed(at[at["regularizer"] == DROPOUT]), ax.per_seed(at[at["regularizer"] == BASELINE]))
        lo, hi = stats.t_mean_ci(g)
        gains[n] = g
        rows.append([str(n), str(g.size), fmt_pp(g.mean() if g.size else math.nan, lo, hi)])
    usable = [n for n, g in gains.items() if g.size >= 2]
    table = md_table(["train size", "paired seeds", "dropout − none, pp [95% CI]"], rows, right={1, 2})
    if len(usable) < 2:
        return table, f"**{NOT_RUN}**", NOT_RUN
    small, large = gains[usable[0]], gains[usable[-1]]
    gap, p, p_eq, cat = size_trend(small, large)
    trend = (f"{table}\n\nBenefit at n={usable[0]} minus benefit at n={usable[-1]}: {fmt_pp(gap)} pp, Welch p = "
             f"{fmt_p(p)}, TOST (±{100 * stats.EQUIVALENCE_MARGIN:g} pp) p = {fmt_p(p_eq)}.")
    return trend, f"**{cat}** (benefit at the smallest size minus that at the largest: {fmt_pp(gap)} pp, " \
                  f"p = {fmt_p(p)})", cat


def agreement_section(fixed: Study, rerun_dir: Path) -> str:
    """The share of (setting, arm) outcomes against none that the rerun with another population
    grouping reproduces; `better` against `worse` is a defect and is named."""
    if not _has_records(rerun_dir):
        return f"{NOT_RUN}: no records in {rerun_dir.name}/ (`python run.py -m experiment={AGREEMENT}`)."
    report = _sibling_report(rerun_dir)
    if report is None:
        return f"{NOT_RUN}: no readable record in {rerun_dir.name}/."
    runs = load_study_runs(rerun_dir)
    ctxs = [resolve(runs, s) for s in MAIN_SETTINGS]
    fx, re_ = _pairwise_rows(fixed.report, fixed.main), _pairwise_rows(report, ctxs)  # Holm over a setting's arms
    keys = [k for k in fx if k in re_]
    if not keys:
        return f"{NOT_RUN}: the rerun shares no (setting, arm) with the study."
    rows, agree, defects, soft = [], 0, [], 0
    for key in keys:
        a, b = fx[key]["verdict"], re_[key]["verdict"]
        agree += a == b
        if {a, b} == {"better", "worse"}:
            defects.append(f"{key[0]}/{key[1]} {key[3]}")
        elif a != b:
            soft += 1
        rows.append([f"{key[0]}/{key[1]}", key[3], _diff_cell(fx[key]), a, _diff_cell(re_[key]), b,
                     "yes" if a == b else "**no**"])
    sizes = sorted({int(lookup(read_record(p), "extra", "replicas") or 1) for p in runs["path"]})
    grouping = ", ".join("separate runs" if n == 1 else f"populations of {n}" for n in sizes)
    head = (f"{agree} of {len(keys)} outcomes agree ({100 * agree / len(keys):.0f}%); {soft} disagreement(s) involve "
            f"`equivalent` or `inconclusive` (one run set found an effect or an equivalence the other could not "
            f"show at this power); "
            + (f"**{len(defects)} reverse the outcome (`better` against `worse`), a defect: {', '.join(defects)}**"
               if defects else "none reverses it (`better` against `worse`)")
            + f". The rerun's records were trained as {grouping}.")
    return head + "\n\n" + md_table(["setting", "arm", "study: arm − none, pp [95% CI]", "study",
                                     "rerun: arm − none, pp [95% CI]", "rerun", "agree"], rows)


COST_LIMIT_HOURS = 3.0  # issue 16: `make study` from scratch on the 2-core reference machine


def cost_section(root: Path, study_name: str) -> str:
    """Each part's wall-clock time as its timing.json gives it, and their sum against COST_LIMIT_HOURS."""
    import json

    parts = [("fixed strength and sanity", study_name), ("tuned", TUNED), ("engine agreement", AGREEMENT),
             ("Table 9", TABLE9), ("claim 5 at equal steps", SIZE_AXIS)]
    rows, total, missing = [], 0.0, []
    for what, name in parts:
        try:
            t = json.loads((root / name / "timing.json").read_text())
            sec = float(t["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            rows.append([what, f"`{name}/`", "not recorded", "–", "–"])
            missing.append(what)
            continue
        total += sec
        rows.append([what, f"`{name}/`", f"{sec:.0f}", str(t.get("command", "–")), str(t.get("note", ""))])
    table = md_table(["part", "folder", "seconds", "command", "note"], rows, right={2})
    verdict = (f"Sum of the recorded parts: {total:.0f} s ({total / 3600:.2f} h"
               + (f"; not recorded: {', '.join(missing)}" if missing else "")
               + f"), against the {COST_LIMIT_HOURS:g} h the study may take from scratch on the 2-core machine.")
    return verdict + "\n\n" + table


def table9_line(table9_dir: Path) -> str:
    if not _has_records(table9_dir):
        return f"{NOT_RUN} (no records in {table9_dir.name}/; `make table9`)"
    return _sibling_module(TABLE9).ordering_line(table9_dir)


# --------------------------------------------------------------------------------------
# the whole report
# --------------------------------------------------------------------------------------

def build_study(experiment_dir: str | Path, *, plots: bool = True) -> Study:
    """Write the generic tables/plots and compute every section's fields (no README yet)."""
    experiment_dir = Path(experiment_dir)
    report = write_report([experiment_dir], experiment_dir, baseline=BASELINE, metric=METRIC, plots=plots)
    runs = load_study_runs(experiment_dir)
    study = Study(experiment_dir=experiment_dir, report=report, runs=runs,
                  main=[resolve(runs, s) for s in MAIN_SETTINGS], sizes=[resolve(runs, s) for s in SIZE_SETTINGS])
    study.files = list(report.files)
    f = study.fields
    f["overview"] = overview_section(runs, [*study.main, *study.sizes, *_sanity_contexts(study)], ARMS)
    f["health"] = health_section(report, runs)
    f["timing"] = timing_section(experiment_dir)
    f["verdict_rule"] = VERDICT_RULE
    f["alpha"] = f"{stats.ALPHA}"
    _claim1(study)
    _claim2(study)
    _claim3(study)
    _claim4(study)
    _claim5(study)
    _claim6(study)
    _sanity(study)
    _calibration(study)
    # the verdicts: the tuned study (sibling folders of this one), its sections beside the fixed ones
    root = experiment_dir.resolve().parent
    tuned = study.tuned = tuned_study(root / TUNED, study)
    f.update({f"tuned_{k}": v for k, v in tuned.fields.items()})
    f["tuned_overview"] = (overview_section(tuned.runs, tuned.main, ARMS) if len(tuned.runs)
                           else f"{NOT_RUN}: no final records in {TUNED}/.")
    f["tuned_health"] = health_section(tuned.report, tuned.runs) if len(tuned.runs) else NOT_RUN
    f["tuned_claim5_trend"], f["tuned_claim5_verdict"], tuned.verdicts["claim5"] = claim5_tuned(root / SIZE_AXIS)
    tuned.verdicts["claim6"] = study.verdicts["claim6"]
    f["flips"] = flips_section(study, tuned)
    f["convergence"] = convergence_section(tuned)
    f["tuned_protocol"] = tuned_protocol_section(tuned)
    f["agreement"] = agreement_section(study, root / AGREEMENT)
    f["table9"] = table9_line(root / TABLE9)
    f["cost"] = cost_section(root, experiment_dir.resolve().name)
    f["summary"] = _summary(tuned, study)
    if plots:
        p = write_size_plot(study.size_series, experiment_dir / SIZE_PLOT)
        if p is not None:
            study.files.append(p)
    return study


def _summary(tuned: Study, fixed: Study) -> str:
    """Each claim's verdict: tuned (the answer), and at the fixed strength of the first design."""
    claims_ = [
        ("1. Dropout improves generalization (test accuracy)", "claim1_accuracy"),
        ("1. Dropout reduces overfitting (train–test gap)", "claim1_gap"),
        ("2. Dropout reduces co-adaptation (correlation)", "claim2_mech_corr"),
        ("2. Dropout stops units being always active (sparsity)", "claim2_mech_sparsity"),
        ("3. Early stopping halts training", "claim3_halt"),
        ("3. Early stopping improves test accuracy", "claim3_accuracy"),
        ("4. Dropout vs early stopping, head to head", "claim4_head_to_head"),
        ("4. Dropout + early stopping beats each alone", "claim4_combo"),
        ("5. Dropout helps more with less data", "claim5"),
        ("6. The document's Dropout class does nothing", "claim6"),
    ]

    def cell(v: dict[str, str], key: str) -> str:
        got = v.get(key, NOT_RUN)
        if key != "claim4_head_to_head":
            return got
        k, j, n = got.split("/") if got.count("/") == 2 else ("0", "0", "0")
        return (f"dropout better on {k}, early stopping better on {j}, of {n} tested settings" if int(n)
                else NOT_RUN)

    rows = [[name, cell(tuned.verdicts, key), cell(fixed.verdicts, key)] for name, key in claims_]
    return md_table(["claim", "verdict: tuned protocol (the answer)", "at fixed strength (first design)"], rows,
                    right=set())


def write_study(experiment_dir: str | Path = DEFAULT_DIR, template: str | Path | None = None, *,
                plots: bool = True) -> Study:
    """Tables, plots and README.md of the study in `experiment_dir`; returns the Study."""
    experiment_dir = Path(experiment_dir)
    text = template_path(experiment_dir, TEMPLATE, template).read_text(encoding="utf-8")
    study = build_study(experiment_dir, plots=plots)
    study.readme = write_readme(experiment_dir / README_NAME, text, study.fields)
    study.files.append(study.readme)
    return study


def main(argv: list[str] | None = None) -> int:
    from regbench.reporting import stamp

    # the report reads its sibling folders too (the tuned study, the checks): their records and
    # analysis code join the fingerprint, so `--if-changed` rebuilds when any of them changes
    given = list(sys.argv[1:] if argv is None else argv)
    args = [a for i, a in enumerate(given) if not a.startswith("-") and (i == 0 or given[i - 1] != "--template")]
    root = Path(args[0]).resolve().parent if args else HERE.parent
    siblings = (TUNED, AGREEMENT, SIZE_AXIS, TABLE9)
    h = hashlib.sha256(b"".join(p.read_bytes() for name in (HERE.name, *siblings)
                                for p in sorted((HERE.parent / name).glob("*.py"))))
    for name in siblings:
        h.update(stamp.fingerprint(root / name).encode())
    code = h.hexdigest()
    return claims.main(argv, prog=f"python experiments/{HERE.name}/{Path(__file__).name}",
                       description=__doc__.split("\n\n")[0], default_dir=DEFAULT_DIR, default_template=TEMPLATE,
                       write_study=write_study, code=code)


if __name__ == "__main__":
    sys.exit(main())
