"""The study's report generator (experiments/dropout_vs_early_stopping/analysis.py, on
regbench.reporting.claims) on synthetic experiment folders with known effects."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from regbench.regularizers.layers import realised_drop_rate
from regbench.reporting import claims as C
from regbench.reporting.synthetic import make_record, write_runs
from test_layers import assert_proportion

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "dropout_vs_early_stopping"
sys.path.insert(0, str(STUDY))
import analysis as S  # noqa: E402  (the study's own module, beside its records)

CLAIM_HEADINGS = (
    "## Claim 1: dropout prevents overfitting",
    "## Claim 2: the mechanism",
    "## Claim 3: early stopping halts training",
    "## Claim 4: dropout and early stopping, head to head",
    "## Claim 5: dropout's benefit depends on the training-set size",
    "## Claim 6: the document's own Dropout class",
    "## Sanity against published numbers",
    "## Calibration",
)

# (data, model, train_size) of every setting the study sweeps; train_size None = the whole split
FULL_SETTINGS = [(s.data, s.model, None) for s in S.MAIN_SETTINGS] + \
    [(S.SIZE_DATA, S.SIZE_MODEL, n) for n in S.SIZES[:-1]] + [("mnist1d", "logreg", None)]
BASE_ACC = {"mnist1d": 0.65, "mnist5k": 0.90, "digits": 0.95}


def config_hash(data, model, size=None):
    return f"{data}-{model}-{size or 'full'}"


def default_effects(data, model, size, arm):
    """(accuracy shift, train-test gap, mean |corr|, sparsity) of an arm: dropout clearly helps."""
    shift = {"none": 0.0, "dropout": 0.03, "gaussian_dropout": 0.02, "early_stop": 0.01,
             "dropout_early_stop": 0.05, "maxnorm_dropout": 0.03, "weight_decay": 0.0}[arm]
    if size is not None and arm in ("dropout", "dropout_early_stop", "gaussian_dropout", "maxnorm_dropout"):
        shift += 0.04 * (3500 - size) / 3000  # more benefit with less data
    dropped = "dropout" in arm
    return shift, (0.05 if dropped else 0.20), (0.10 if dropped else 0.30), (0.70 if dropped else 0.50)


def study_records(settings=FULL_SETTINGS, arms=S.ARMS, seeds=range(4), effects=default_effects,
                  mechanism=True, epochs=4, noise=0.001):
    """Records of a synthetic study: one config hash per (data, model, train_size)."""
    rng = np.random.default_rng(0)
    records = []
    for data, model, size in settings:
        gh = config_hash(data, model, size)
        for arm in (["none"] if model == "logreg" else arms):
            for seed in seeds:
                shift, gap, corr, sparsity = effects(data, model, size, arm)
                acc = BASE_ACC[data] - (0.3 if model == "logreg" else 0.0) + shift + noise * rng.standard_normal()
                early = arm in ("early_stop", "dropout_early_stop")
                config = {"seed": seed, "data": {"name": data, "train_size": size, "val_size": 500},
                          "model": {"name": model}, "regularizer": {"name": arm},
                          "optim": {"name": "adam", "lr": 0.01, "batch_size": 100},
                          "trainer": {"max_epochs": epochs}}
                r = make_record(seed=seed, acc=float(acc), regularizer=arm, data=data, model=model, group_hash=gh,
                                epochs=epochs, train_acc=float(min(1.0, acc + gap)), config=config,
                                stopped_epoch=1 if early else None, train_seconds=2.0 if early else 4.0)
                r["steps"] = 35 * r["epochs_trained"]
                if mechanism:
                    r["extra"]["mechanism"] = {
                        "ece": 0.05 - shift / 2, "entropy": 0.5,
                        "summary": {"layers": 2, "mean_abs_corr": corr + 0.01 * rng.standard_normal(),
                                    "sparsity": sparsity + 0.01 * rng.standard_normal(), "unit_norm_mean": 1.0,
                                    "dead_units": 0}}
                records.append(r)
    return records


def make_study(root: Path, **kw) -> Path:
    d = root / "experiments" / "dropout_vs_early_stopping"
    write_runs(d, study_records(**kw))
    return d


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = make_study(tmp_path_factory.mktemp("study"))
    (d / C.TIMING_FILE).write_text(json.dumps({"seconds": 5400.0, "command": "python run.py -m experiment=X",
                                               "machine": "2-core test box"}))
    study = S.write_study(d, plots=False)  # the generic plots take seconds; size_effect.png is tested below
    return d, study


# --------------------------------------------------------------------------------------
# the full synthetic study
# --------------------------------------------------------------------------------------


def test_readme_has_every_claim_and_files(full):
    d, study = full
    text = (d / "README.md").read_text(encoding="utf-8")
    for heading in CLAIM_HEADINGS:
        assert heading in text
    assert "$" not in text.replace("$$", "")  # every placeholder filled
    for name in ("per_arm.md", "pairwise.md", "ranking.md"):
        assert (d / name).is_file(), name
    assert "通过随机失活神经元来防止过拟合" in text and "return self.module(x)" in text
    assert "5400 s" in text and "2-core test box" in text and "python run.py -m experiment=X" in text
    claim1 = text.split("## Claim 1")[1].split("## Claim 2")[0]
    fixed = [study.fields[k] for k in ("claim1_table", "claim1_gap_table", "claim1_variants_table")]
    assert all(t in claim1 and "not run" not in t for t in fixed)
    assert "not run" in study.fields["tuned_claim1_table"]      # no tuned records beside this study


def test_numbers_shown_are_the_dataframe_values(full):
    d, study = full
    text = (d / "README.md").read_text(encoding="utf-8")
    pa, pw = study.report.per_arm, study.report.pairwise
    for data, model, _ in FULL_SETTINGS[:5]:
        for arm in ("none", "dropout", "early_stop"):
            r = pa[(pa["data"] == data) & (pa["model"] == model) & (pa["regularizer"] == arm)
                   & (pa["config"] == config_hash(data, model))].iloc[0]
            assert C.fmt_acc(r["test_acc_mean"], r["test_acc_ci95_low"], r["test_acc_ci95_high"]) in text
        r = pw[(pw["data"] == data) & (pw["model"] == model) & (pw["regularizer"] == "dropout")
               & (pw["config"] == config_hash(data, model))].iloc[0]
        row = f"| {data}/{model} |"
        line = next(ln for ln in text.splitlines() if ln.startswith(row) and
                    C.fmt_pp(r["test_acc_diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"]) in ln)
        # claim 1's p-values are Holm within its own family (the 5 settings), not pairwise.md's
        c = next(c for k, c in study.families["claim1_accuracy"].items() if k[1].data == data and k[1].model == model)
        assert f"| {C.fmt_p(c.p_holm)} | {c.outcome} |" in line
        assert c.result["p_verdict"] <= c.p_holm <= min(1.0, 5 * c.result["p_verdict"]) + 1e-15
    # the size axis shows the pairwise rows of each size's own config
    for n in (500, 1000, 2000):
        r = pw[(pw["config"] == config_hash("mnist1d", "mlp", n)) & (pw["regularizer"] == "dropout")].iloc[0]
        assert C.fmt_pp(r["test_acc_diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"]) in text


def test_verdicts_fire_on_clear_effects(full):
    _, study = full
    v = study.verdicts
    assert v["claim1_accuracy"] == "supported"      # dropout +3 pp everywhere
    assert v["claim1_gap"] == "supported"           # gap 0.05 vs 0.20
    assert v["claim2_mech_corr"] == "supported"     # 0.10 vs 0.30
    assert v["claim2_mech_sparsity"] == "supported"
    assert v["claim3_halt"] == "supported"          # every early_stop run stopped early
    assert v["claim3_accuracy"] == "supported"      # +1 pp with noise 0.4 pp: clear over 4 seeds
    assert v["claim4_head_to_head"] == "5/0/5"      # dropout beats early stopping everywhere
    assert v["claim4_combo"] == "supported"         # +5 pp vs +3 / +1
    assert v["claim5"] == "supported"               # +7 pp at n=500 vs +3 pp at the full size
    assert v["claim6"] == "confirmed"
    text = study.readme.read_text(encoding="utf-8")
    assert "**supported** (test accuracy vs none: better on 5 of 5 tested settings, worse on 0" in text
    assert "| `logreg` (logistic regression) | ~32% | 35.0" in text  # 0.65 - 0.3, above the published range
    assert "above" in next(ln for ln in text.splitlines() if ln.startswith("| `logreg`"))
    assert "| `resmlp` (MLP with residual hidden layer (their MLPBase)) | 64–68% | not run | 0 | – | – | not run |" \
        in text
    assert "| `mlp` (MLP) | 64–68% | " in text and "| 4 | 4 | 140 | consistent |" in text  # 4 epochs x 35 steps


def test_regeneration_is_byte_identical(full, tmp_path):
    d, study = full
    before = {name: (d / name).read_bytes() for name in ("README.md", "per_arm.md", "pairwise.md")}
    S.write_study(d, plots=False)
    for name, data in before.items():
        assert (d / name).read_bytes() == data, name
    a = S.write_size_plot(study.size_series, tmp_path / "a.png")
    b = S.write_size_plot(study.size_series, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    assert [n for n, *_ in study.size_series["dropout"]] == list(S.SIZES)


# --------------------------------------------------------------------------------------
# verdict rules on constructed data, missing parts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcomes, category", [
    (["better"] * 3, "supported"),
    (["worse"] * 3, "contradicted"),                      # symmetric with supported
    (["better", "inconclusive", "not run"], "partly supported"),
    (["worse", "equivalent"], "partly contradicted"),     # symmetric with partly supported
    (["better", "worse"], "mixed"),
    (["equivalent"] * 2, "no effect"),
    (["equivalent", "inconclusive"], "inconclusive"),
    (["inconclusive"] * 2, "inconclusive"),
    (["not run", "not testable"], "not run"),
])
def test_tally_rule(outcomes, category):
    assert C.tally(outcomes)[0] == category


def test_dropout_worse_everywhere_is_contradicted_and_mixed_is_mixed(tmp_path):
    settings = [("mnist1d", "mlp", None), ("mnist5k", "mlp", None), ("digits", "mlp", None)]

    def worse(data, model, size, arm):
        s, g, c, sp = default_effects(data, model, None, arm)
        return (-0.05 if arm == "dropout" else s), g, c, sp

    def mixed(data, model, size, arm):
        s, g, c, sp = default_effects(data, model, None, arm)
        return ({"mnist1d": 0.05, "mnist5k": -0.05, "digits": 0.0}[data] if arm == "dropout" else s), g, c, sp

    for effects, category in ((worse, "contradicted"), (mixed, "mixed")):
        d = make_study(tmp_path / category, settings=settings, arms=("none", "dropout"), effects=effects)
        study = S.write_study(d, plots=False)
        assert study.verdicts["claim1_accuracy"] == category
        assert f"**{category}** (test accuracy vs none" in study.readme.read_text(encoding="utf-8")


def test_tiny_study_says_not_run(tmp_path):
    d = make_study(tmp_path, settings=[("mnist1d", "mlp", None)], arms=("none", "dropout"), seeds=range(3),
                   mechanism=False)
    study = S.write_study(d, plots=False)
    text = study.readme.read_text(encoding="utf-8")
    for heading in CLAIM_HEADINGS:
        assert heading in text
    assert "| digits/mlp | 0 / 0 | not run | not run | not run | – | not run |" in text
    assert "| mnist5k/seed_cnn | – | 3500 | not run |" in text
    assert "Not measured: no record has `extra.mechanism`" in text
    assert "Not recorded (no `timing.json`" in text
    v = study.verdicts
    assert v["claim3_accuracy"] == v["claim3_halt"] == v["claim5"] == v["claim4_combo"] == "not run"
    assert v["claim2_mech_corr"] == "not run" and v["claim4_head_to_head"] == "0/0/0"
    assert v["claim1_accuracy"] == "supported"
    assert not (d / S.SIZE_PLOT).exists()


def test_size_axis_uses_null_train_size_as_the_full_split(tmp_path):
    d = make_study(tmp_path, settings=[("mnist1d", "mlp", None), ("mnist1d", "mlp", 500)], arms=("none", "dropout"),
                   seeds=range(3), epochs=2)
    study = S.write_study(d, plots=True)
    for name in ("size_effect.png", "curves.png", "intervals.png", "README.md"):
        assert (d / name).is_file(), name
    assert "![dropout − none vs training-set size](size_effect.png)" in study.readme.read_text(encoding="utf-8")
    assert [c.ran for c in study.sizes] == [True, False, False, True]
    assert study.sizes[-1].group_hash == study.main[0].group_hash == config_hash("mnist1d", "mlp")
    assert study.verdicts["claim5"] == "supported"


def test_two_settings_of_one_arm_are_named_and_the_larger_is_used(tmp_path):
    records = study_records(settings=[("mnist1d", "mlp", None)], arms=("none", "dropout"), seeds=range(3),
                            mechanism=False)
    for r in records:
        if r["regularizer"] == "dropout":
            r["config"]["regularizer"]["dropout"] = {"p": 0.5}
    extra = study_records(settings=[("mnist1d", "mlp", None)], arms=("dropout",), seeds=range(2), mechanism=False)
    for r in extra:
        r["config"]["regularizer"]["dropout"] = {"p": 0.1}
        r["run_id"] += "-p0.1"
    d = tmp_path / "exp"
    write_runs(d, records + extra)
    study = S.write_study(d, plots=False)
    assert study.main[0].arm("dropout") == "dropout (dropout.p=0.5)"
    text = study.readme.read_text(encoding="utf-8")
    assert ("dropout ran with several settings (dropout (dropout.p=0.1); dropout (dropout.p=0.5)): the study uses "
            "dropout (dropout.p=0.5)") in text
    assert "| mnist1d/mlp | 3 / 3 |" in text


def test_seed_document_dropout_does_nothing():
    r = S.seed_doc_dropout_check()
    assert r["doc_changed"] == 0 and r["outputs"] == 1024
    assert 0.4 < r["ours_zeroed"] / r["outputs"] < 0.6


# --------------------------------------------------------------------------------------
# claim 6: Dropped(module), the fixed seed-document wrapper (it lives with the study)
# --------------------------------------------------------------------------------------


class SeedDocDropout(nn.Module):
    """The snippet from the seed document: it wraps a module and does nothing else."""

    def __init__(self, module: nn.Module, p: float = 0.5):
        super().__init__()
        self.module, self.p = module, p

    def forward(self, x):
        return self.module(x)


def assert_wrapper_drops(wrapper: nn.Module, x: torch.Tensor) -> None:
    inner = wrapper.module(x)
    y = wrapper.train()(x)
    assert not torch.equal(y, inner), "the wrapper returns its module's output unchanged in training"
    q = 1 - realised_drop_rate(wrapper.p)
    assert torch.all((y == 0) | torch.isclose(y, inner / q))
    torch.testing.assert_close(wrapper.eval()(x), inner, rtol=0, atol=0)


def test_dropped_wraps_and_drops():
    torch.manual_seed(1234)
    x = torch.randn(64, 16)
    wrapper = S.Dropped(nn.Linear(16, 16), p=0.5)
    assert_wrapper_drops(wrapper, x)
    y = wrapper.train()(x)
    assert_proportion(int((y == 0).sum()), y.numel(), 0.5, "Dropped output drop rate")


def test_dropped_check_catches_seed_doc_wrapper():
    with pytest.raises(AssertionError, match="unchanged"):
        assert_wrapper_drops(SeedDocDropout(nn.Linear(16, 16), p=0.5), torch.randn(64, 16))


def test_cli_exit_codes(tmp_path, capsys):
    assert S.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert S.main([str(tmp_path / "empty")]) == 1
    d = make_study(tmp_path, settings=[("digits", "mlp", None)], arms=("none", "early_stop"), seeds=range(2))
    assert S.main([str(d), "--no-plots"]) == 0
    assert (d / "README.md").is_file() and "claim3_halt: supported" in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# the study's arms and settings come from its sweep YAMLs
# --------------------------------------------------------------------------------------


def test_arms_and_settings_are_the_sweep_yamls(tmp_path):
    from omegaconf import OmegaConf

    params = OmegaConf.load(S.CONF / "experiment" / f"{S.EXPERIMENT}.yaml").hydra.sweeper.params
    assert ",".join(S.ARMS) == params.regularizer
    assert len(S.SWEEP.settings) == len(params["+setting"].split(","))
    # an edited copy of the config: other arms, settings and sizes, in another order
    conf = tmp_path / "conf"
    shutil.copytree(S.CONF, conf)
    path = conf / "experiment" / f"{S.EXPERIMENT}.yaml"
    text = path.read_text()
    text = text.replace(params["+setting"], "digits_mlp,mnist1d_mlp_n2000,mnist1d_mlp,mnist1d_mlp_n500")
    arms = ("dropout_early_stop", "early_stop", "dropout", "none", "maxnorm_dropout", "gaussian_dropout")
    text = text.replace(params.regularizer, ",".join(arms))
    path.write_text(text)
    sweep = S.read_sweep(conf)
    assert sweep.arms == arms
    assert sweep.settings == (S.Setting("digits", "mlp"), S.Setting("mnist1d", "mlp", 2000),
                              S.Setting("mnist1d", "mlp"), S.Setting("mnist1d", "mlp", 500))
    assert sweep.sanity == (S.Setting("mnist1d", "logreg"), S.Setting("mnist1d", "resmlp"))
    path.write_text(text.replace("dropout_early_stop,early_stop,", ""))
    with pytest.raises(ValueError, match=r"lacks early_stop, dropout_early_stop, which the claims compare"):
        S.read_sweep(conf)


def test_if_changed_rebuilds_when_the_records_or_the_study_code_change(tmp_path, capsys):
    d = make_study(tmp_path, settings=[("digits", "mlp", None)], arms=("none", "dropout"), seeds=range(2))
    written = []

    def run(code):
        def write(experiment_dir, template, plots):
            written.append(code)
            return S.write_study(experiment_dir, template, plots=plots)
        return C.main([str(d), "--no-plots", "--if-changed"], prog="x", description="x", default_dir=d,
                      default_template=S.TEMPLATE, write_study=write, code=code)

    assert run("a") == 0 and run("a") == 0 and written == ["a"]
    assert "study report unchanged" in capsys.readouterr().out
    assert run("b") == 0 and written == ["a", "b"]  # an edit of the study's code
    write_runs(d, study_records(settings=[("digits", "mlp", None)], arms=("none",), seeds=[7]))
    assert run("b") == 0 and written == ["a", "b", "b"]  # a new record


@pytest.mark.parametrize("setting, arm, seed", [("mnist1d_mlp", "none", 0), ("mnist5k_seed_cnn", "dropout", 3),
                                                ("mnist1d_mlp_n500", "early_stop", 9), ("digits_mlp", "weight_decay", 5)])
def test_a_fresh_composition_of_the_study_preset_finds_its_committed_record(setting, arm, seed):
    """`make study` skips what is committed only if today's config of a job hashes to the folder its
    record was written in: keys added since (the logger, the progress bar, gradient clipping when off)
    must not enter the run id."""
    from conftest import compose
    from regbench.naming import run_id

    cfg = compose(["experiment=dropout_vs_early_stopping", f"+setting={setting}", f"regularizer={arm}",
                   f"seed={seed}"])
    assert (STUDY / run_id(cfg) / "results.json").is_file(), run_id(cfg)
