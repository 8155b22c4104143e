"""The study's tuned verdicts and the checks beside it (experiments/dropout_vs_early_stopping/analysis.py:
tuned_study, flips, convergence, claim 5 from the size axis, engine agreement; and
experiments/srivastava_table9/analysis.py), on synthetic sibling folders with known effects."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from regbench.reporting.synthetic import make_record, write_runs
from test_study import FULL_SETTINGS, S, default_effects, make_study, study_records

ROOT = Path(__file__).resolve().parents[1]
FINAL_SEEDS = range(1000, 1008)


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"t_{name}", ROOT / "experiments" / name / "analysis.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def tuned_config(data, model, arm, seed, size=None, epochs=10, lr=0.003, extra=None):
    return {"seed": seed, "data": {"name": data, "train_size": size, "val_size": 500},
            "model": {"name": model}, "optim": {"name": "adam", "lr": lr, "batch_size": 100},
            "trainer": {"max_epochs": epochs},
            "regularizer": {"name": arm, **(extra or {}),
                            "tune": {"dropout": {"p": {"low": 0.05, "high": 0.8}}} if "dropout" in arm else {}},
            "protocol": {"name": "tuned", "role": "final", "study": f"{data}-{model}-{arm}", "trial": 3,
                         "trials": 4, "tune_seeds": 2, "sampler": "tpe", "metric": "val/acc",
                         "tune": {"optim": {"lr": {"low": 1e-4, "high": 3e-2, "log": True}}}}}


def write_final(folder: Path, records_by_study: dict[str, list[dict]]) -> None:
    for study, records in records_by_study.items():
        write_runs(folder / f"tuned-{study}" / "final", records)


def tuned_records(effect, settings=S.TUNED_SETTINGS, arms=S.ARMS, late=lambda *a: False, epochs=10):
    """Final-seed records of a tuned study: test acc = base + effect(data, model, arm) (+ tiny noise);
    `late(data, model, arm)` puts every run's best epoch at the cap's last epoch."""
    rng = np.random.default_rng(1)
    out: dict[str, list[dict]] = {}
    for s in settings:
        for arm in arms:
            recs = []
            for seed in FINAL_SEEDS:
                acc = 0.7 + effect(s.data, s.model, arm) + 0.001 * rng.standard_normal()
                extra = {"dropout": {"p": 0.2}} if "dropout" in arm else None
                r = make_record(seed=seed, acc=float(acc), regularizer=arm, data=s.data, model=s.model,
                                group_hash=f"tuned-{s.data}-{s.model}-{s.train_size}", epochs=epochs,
                                config=tuned_config(s.data, s.model, arm, seed, s.train_size, epochs, extra=extra))
                r["best_epoch"] = epochs - 1 if late(s.data, s.model, arm) else 1
                recs.append(r)
            out[f"{s.data}-{s.model}-{s.train_size}-{arm}"] = recs
    return out


def flip_dropout_on_mnist1d(data, model, arm):
    """Tuned effects: as the fixed study's, except dropout on mnist1d/mlp, which hurts by 3 pp."""
    if (data, model, arm) == ("mnist1d", "mlp", "dropout"):
        return -0.03
    return default_effects(data, model, None, arm)[0]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned_study")
    d = make_study(root)
    write_final(root / "experiments" / S.TUNED,
                tuned_records(flip_dropout_on_mnist1d,
                              late=lambda data, model, arm: (data, model, arm) == ("digits", "mlp", "weight_decay")))
    return d, S.write_study(d, plots=False)


def test_verdicts_come_from_the_tuned_records(tuned):
    d, study = tuned
    t, f = study.tuned.verdicts, study.verdicts
    assert f["claim1_accuracy"] == "supported"           # fixed: +3 pp everywhere
    assert t["claim1_accuracy"] == "mixed"               # tuned: worse on mnist1d/mlp, better elsewhere
    summary = d.joinpath("README.md").read_text(encoding="utf-8").split("## Summary")[1].split("## The study")[0]
    assert "| 1. Dropout improves generalization (test accuracy) | mixed | supported |" in summary


def test_flips_name_the_changed_outcome_and_the_reversal(tuned):
    d, study = tuned
    text = study.fields["flips"]
    changed = [ln for ln in text.splitlines() if "**yes**" in ln]
    assert len(changed) == 1 and changed[0].startswith("| mnist1d/mlp | dropout |")
    assert "| better | " in changed[0] and "| worse | **yes** |" in changed[0]
    assert text.startswith("1 of ") and "1 of them reversed" in text
    assert "lr 0.003, p 0.2" in changed[0]           # the tuned choice, as the records hold it
    # seed_cnn is tuned on 1000 digits, the fixed study's on 3500: not the same setting, not paired
    assert not any(ln.startswith("| mnist5k/seed_cnn") for ln in text.splitlines())
    assert "without a fixed-strength twin of the same training-set size: mnist5k/seed_cnn (n=1000)" in text


def test_convergence_counts_best_epochs_late_in_the_cap(tuned):
    _, study = tuned
    text = study.fields["convergence"]
    row = next(ln for ln in text.splitlines() if ln.startswith("| digits/mlp | weight_decay |"))
    assert "100% **(most)**" in row
    assert "1 (setting, arm) cell(s) have most of their runs there" in text
    assert next(ln for ln in text.splitlines() if ln.startswith("| digits/mlp | none |")).endswith("| 0% |")


def size_axis_records(gain_at):
    out = {}
    for n in (250, 1000, 16000):
        for arm in ("none", "dropout"):
            out[f"n{n}-{arm}"] = [
                make_record(seed=s, acc=0.6 + (gain_at(n) if arm == "dropout" else 0.0) + 0.002 * ((s * 7 + n) % 5),
                            regularizer=arm, group_hash=f"n{n}",
                            config=tuned_config("mnist1d", "mlp", arm, s, n)) for s in FINAL_SEEDS]
    return out


@pytest.mark.parametrize("gain_at, verdict", [(lambda n: 0.06 - 0.003 * np.log2(n), "supported"),
                                              (lambda n: -0.06 + 0.003 * np.log2(n), "contradicted")])
def test_claim5_tuned_reads_the_size_axis(tmp_path, gain_at, verdict):
    folder = tmp_path / S.SIZE_AXIS
    write_final(folder, size_axis_records(gain_at))
    trend, line, cat = S.claim5_tuned(folder)
    assert cat == verdict and line.startswith(f"**{verdict}**")
    assert "| 250 | 8 |" in trend and "| 16000 | 8 |" in trend
    assert S.claim5_tuned(tmp_path / "absent")[2] == "not run"


def test_agreement_counts_agreeing_outcomes_and_names_a_reversal(tmp_path):
    d = make_study(tmp_path)
    fixed = S.write_study(d, plots=False)
    sub = [x for x in FULL_SETTINGS if x[2] is None and (x[0], x[1]) in {("mnist1d", "mlp"), ("mnist5k", "mlp")}]

    def rerun_effects(data, model, size, arm):
        e = default_effects(data, model, size, arm)
        if (data, model, arm) == ("mnist5k", "mlp", "dropout"):
            return (-0.03, *e[1:])                       # better in the study, worse here: a defect
        return e

    write_runs(tmp_path / "experiments" / S.AGREEMENT, study_records(settings=sub, effects=rerun_effects))
    text = S.agreement_section(fixed, tmp_path / "experiments" / S.AGREEMENT)
    n = 2 * (len(S.ARMS) - 1)
    assert text.startswith(f"{n - 1} of {n} outcomes agree")
    assert "1 reverse the outcome" in text and "mnist5k/mlp dropout" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| mnist5k/mlp | dropout |"))
    assert row.endswith("| **no** |")


def test_agreement_without_records_says_not_run(tmp_path):
    d = make_study(tmp_path)
    assert S.agreement_section(S.write_study(d, plots=False), tmp_path / "nothing").startswith("not run")


# -------------------------------------------------------------------------------- Table 9

T9 = _module("srivastava_table9")


def table9_records(acc_of):
    return {arm: [make_record(seed=s, acc=acc_of[arm] + 0.001 * ((s * 3) % 4), regularizer=arm, data="mnist5k",
                              group_hash="t9", config=tuned_config("mnist5k", "mlp", arm, s))
                  for s in FINAL_SEEDS] for arm, *_ in T9.PAPER}


@pytest.mark.parametrize("order, verdict", [((0.90, 0.93, 0.96, 0.99), "agrees"),
                                            ((0.99, 0.96, 0.93, 0.90), "disagrees"),
                                            ((0.95, 0.95, 0.95, 0.95), "equivalent")])
def test_table9_reads_each_step_of_the_papers_order(tmp_path, order, verdict):
    write_final(tmp_path, table9_records(dict(zip((a for a, *_ in T9.PAPER), order))))
    steps = T9.steps(T9.final_runs(tmp_path))
    assert [s["verdict"] for s in steps] == [verdict] * 3
    assert f"3 {verdict}" in T9.ordering_line(tmp_path)
    text = T9.report(tmp_path)
    assert "| L2 (`weight_decay`) | 1.62 | " in text and f"**{verdict}**" in text


def test_table9_without_records_is_not_run(tmp_path):
    assert T9.report(tmp_path) is None and T9.ordering_line(tmp_path).startswith("not run")


def test_if_changed_rebuilds_when_a_sibling_folders_records_change(tuned, capsys):
    d, _ = tuned
    assert S.main([str(d), "--no-plots"]) == 0
    assert S.main([str(d), "--no-plots", "--if-changed"]) == 0
    assert "unchanged" in capsys.readouterr().out
    record = next((d.parent / S.TUNED).rglob("results.json"))
    record.write_text(record.read_text().replace('"seed": 1000', '"seed": 1000 ', 1) + "\n")
    assert S.main([str(d), "--no-plots", "--if-changed"]) == 0
    assert "unchanged" not in capsys.readouterr().out


def test_cost_sums_the_parts_timings_and_names_the_missing_ones(tmp_path):
    import json

    for name, sec in (("study", 3600), (S.TUNED, 5400)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "timing.json").write_text(json.dumps({"seconds": sec, "command": f"make {name}"}))
    text = S.cost_section(tmp_path, "study")
    assert text.startswith("Sum of the recorded parts: 9000 s (2.50 h; not recorded: engine agreement, Table 9, "
                           "claim 5 at equal steps), against the 3 h")
    assert "| tuned | `dropout_vs_early_stopping_tuned/` | 5400 | make dropout_vs_early_stopping_tuned |" in text
