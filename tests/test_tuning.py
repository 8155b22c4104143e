"""The tuned protocol (protocol=tuned): equal budgets on validation, fresh final seeds, resumable
Optuna studies, the Dodge et al. estimator, the Optuna sweeper, and refusals of bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli, compose, python, tiny

TINY_TUNED = ["protocol=tuned", "protocol.trials=3", "protocol.tune_seeds=2", "protocol.final_seeds=3",
              *tiny()]


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def role(r: dict) -> str | None:
    return (r["config"].get("protocol") or {}).get("role")


def trials_of(db: Path) -> list[tuple[int, str, float | None, dict]]:
    """(number, state, value, params) of every trial in an Optuna SQLite study."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT trial_id, number, state FROM trials ORDER BY number").fetchall()
        out = []
        for tid, number, state in rows:
            v = con.execute("SELECT value FROM trial_values WHERE trial_id=?", (tid,)).fetchone()
            params = dict(con.execute("SELECT param_name, param_value FROM trial_params WHERE trial_id=?", (tid,)))
            out.append((number, state, v[0] if v else None, params))
        return out
    finally:
        con.close()


# ------------------------------------------------------------------------------- the estimator
def test_expected_max_matches_a_hand_computed_case():
    from regbench.reporting.tuning import expected_max

    # scores 1, 2, 3; best of n=2 draws with replacement: P(max=1)=1/9, P(2)=3/9, P(3)=5/9
    mean, sd = expected_max([3.0, 1.0, 2.0], 3)
    assert mean[0] == pytest.approx(2.0) and sd[0] == pytest.approx(math.sqrt(2 / 3))
    assert mean[1] == pytest.approx(22 / 9) and sd[1] == pytest.approx(math.sqrt(58 / 9 - (22 / 9) ** 2))
    # n=3: P(max=1)=1/27, P(2)=7/27, P(3)=19/27
    assert mean[2] == pytest.approx((1 + 14 + 57) / 27)
    # a loss: the best is the smallest; E[min of 2] = (3*1 + 2*3 + 1*5) / 9
    lmean, lsd = expected_max([1.0, 2.0, 3.0], 2, higher_is_better=False)
    assert lmean[1] == pytest.approx(14 / 9) and lsd[1] == pytest.approx(sd[1])


# -------------------------------------------------------------------------- the run's outcome
def test_a_run_returns_its_status_as_a_string_and_its_objective_as_a_float():
    from regbench.app import Outcome

    o = Outcome("ok", 0.625)
    assert o == "ok" and isinstance(o, str) and float(o) == 0.625
    back = pickle.loads(pickle.dumps(o))  # joblib / submitit carry it between processes
    assert back == "ok" and float(back) == 0.625
    assert math.isnan(float(Outcome("failed")))


# ----------------------------------------------------------------------------- end to end
def test_a_tiny_tuned_sweep_writes_its_records_studies_and_report(tmp_path):
    # final seeds 1200-1202: a multiple of 3, so the fixed sweep below can stack the same seeds (replicas=3)
    r = cli("-m", *TINY_TUNED, "protocol.final_seed_start=1200", "regularizer=none,dropout", f"runs_root={tmp_path}",
            "name=t")
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "t"
    recs = records(sweep)
    tune = [x for x in recs if role(x) == "tune"]
    final = [x for x in recs if role(x) == "final"]
    assert len(tune) == 2 * 3 * 2 and len(final) == 2 * 3 and len(recs) == 18
    assert all(x["status"] == "ok" and x["extra"]["engine"] == "population" for x in recs)
    assert {x["seed"] for x in tune} == {0, 1} and {x["seed"] for x in final} == {1200, 1201, 1202}
    assert len({x["group_hash"] for x in final}) == 1  # the arms' final runs form one comparison
    assert not {x["group_hash"] for x in final} & {x["group_hash"] for x in tune}
    for arm in ("none", "dropout"):
        studies = list(sweep.glob(f"tuned-mnist1d-mlp-{arm}-*/study.db"))
        assert len(studies) == 1
        trials = trials_of(studies[0])
        assert [s for _, s, _, _ in trials] == ["COMPLETE"] * 3
        # each trial's value is the mean val/acc of its two tuning records; the final config is the best trial's
        mine = [x for x in tune if x["regularizer"] == arm]
        for number, _, value, params in trials:
            seeds = [x for x in mine if x["config"]["protocol"]["trial"] == number]
            assert len(seeds) == 2 and value == pytest.approx(np.mean([x["metrics"]["val/acc"] for x in seeds]))
        best = max(trials, key=lambda t: (t[2], -t[0]))
        chosen = [x for x in final if x["regularizer"] == arm]
        assert {x["config"]["protocol"]["trial"] for x in chosen} == {best[0]}
        lr = {x["config"]["optim"]["lr"] for x in chosen}
        assert lr == {x["config"]["optim"]["lr"] for x in mine if x["config"]["protocol"]["trial"] == best[0]}
    md = (sweep / "tuning.md").read_text()
    for section in ("Chosen hyperparameters per arm", "Tuned arms on fresh seeds", "Expected best validation",
                    "Sensitivity"):
        assert section in md
    assert "| none | mnist1d | mlp | 3 x 2 |" in md and "regularizer.dropout.p=" in md
    assert len((sweep / "expected_best.csv").read_text().splitlines()) == 1 + 2 * 3
    assert (sweep / "expected_best.png").stat().st_size and (sweep / "sensitivity.png").stat().st_size
    # the ordinary tables hold the final runs only (3 seeds per arm), never a tuning run
    per_arm = (sweep / "per_arm.csv").read_text().splitlines()
    assert len(per_arm) == 1 + 2 and all(",3,0,0," in row for row in per_arm[1:])

    # the fixed-strength arms on the same final seeds, into the same folder: the report sets them beside
    # the tuned ones and says which verdicts changed; `make tables` rebuilds it the same
    f = cli("-m", "regularizer=none,dropout", "seed=1200", "replicas=3", *tiny(), f"runs_root={tmp_path}", "name=t")
    assert f.returncode == 0, f.stderr[-3000:]
    md = (sweep / "tuning.md").read_text()
    assert "Fixed-strength arms" in md and "Verdicts: fixed strength vs tuned" in md
    assert "verdict(s) changed" in md
    regen = python("-m", "regbench.tables", "--each", str(tmp_path))
    assert regen.returncode == 0, regen.stderr
    assert (sweep / "tuning.md").read_text() == md
    assert not list(sweep.glob("tuned-*/*/per_arm.md"))  # no report inside a study's folders


# --------------------------------------------------------------------------------- resuming
@pytest.mark.slow  # ~15 s of CPU (two sweeps and a poll); make test-slow
def test_a_killed_tuning_run_resumes_without_repeating_a_finished_trial(tmp_path):
    args = ["-m", "protocol=tuned", "regularizer=none", "protocol.trials=5", "protocol.tune_seeds=2",
            "protocol.final_seeds=2", "protocol.stack_trials=1", "trainer.max_epochs=12", "trainer.progress_every=0",
            f"runs_root={tmp_path}", "name=k"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    db = None
    try:
        while time.time() < deadline:
            found = list((tmp_path / "k").glob("tuned-*/study.db"))
            if found:
                db = found[0]
                try:  # kill while a third trial trains (it has its values): the interrupted case
                    now = trials_of(db)
                    if sum(s == "COMPLETE" for _, s, _, _ in now) >= 2 and any(s == "RUNNING" and p for _, s, _, p in now):
                        break
                except sqlite3.Error:
                    pass
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert db is not None
    before = trials_of(db)
    finished = {n: (v, p) for n, s, v, p in before if s == "COMPLETE"}
    assert len(finished) >= 2 and len(finished) < 5
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (db.parent / "tune").rglob("results.json")}

    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    after = trials_of(db)
    # every trial finished before the kill is still there, unchanged, and no trial ran twice
    for n, (v, p) in finished.items():
        assert (after[n][1], after[n][2], after[n][3]) == ("COMPLETE", v, p)
    complete = [t for t in after if t[1] == "COMPLETE"]
    assert len(complete) == 5
    assert len({json.dumps(p, sort_keys=True) for _, _, _, p in complete}) == 5
    # a trial the kill interrupted is FAIL (not counted) and its values were tried again
    interrupted = [p for n, s, _, p in after if s == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0] in [p for _, _, _, p in complete]
    # the records of the finished trials were read, not rewritten
    for p, (mtime, data) in written.items():
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data
    recs = [x for x in records(db.parent / "tune")]
    assert len(recs) == 5 * 2 and len({x["run_id"] for x in recs}) == 10
    assert len(records(db.parent / "final")) == 2


def test_a_trial_whose_records_are_ok_is_read_by_run_id_not_retrained(tmp_path):
    from regbench.app import train_trials
    from regbench.tuning.study import _marked

    cfg = _marked(compose(["regularizer=dropout", *TINY_TUNED]), {"optim.lr": 0.003}, "tune", 0, "s")
    [first] = train_trials([cfg], [0, 1], tmp_path, ["g"], True, "t")
    written = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")}
    assert len(written) == 2
    [again] = train_trials([cfg], [0, 1], tmp_path, ["g"], True, "t")
    assert [(r["run_id"], r["metrics"]) for r in again] == [(r["run_id"], r["metrics"]) for r in first]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")} == written


def test_trials_asked_together_train_as_one_population_with_each_runs_own_record(tmp_path, monkeypatch):
    """Two trials x two seeds: one population of four replicas, each record in its own run's folder
    with its trial's values and pooling key; a trial's records equal nothing of the other's."""
    from regbench import app
    from regbench.tuning.study import _marked

    base = compose(["regularizer=dropout", *TINY_TUNED])
    cfgs = [_marked(base, {"optim.lr": lr, "regularizer.dropout.p": p}, "tune", n, "s")
            for n, (lr, p) in enumerate([(0.003, 0.2), (0.01, 0.6)])]
    calls = []
    real = app.train_population
    monkeypatch.setattr(app, "train_population", lambda c, r, d, label: calls.append(len(c)) or real(c, r, d, label))
    recs = app.train_trials(cfgs, [0, 1], tmp_path, ["g0", "g1"], True, "t")
    assert calls == [4]
    for n, (trial, lr, p) in enumerate(zip(recs, (0.003, 0.01), (0.2, 0.6))):
        assert [r["seed"] for r in trial] == [0, 1] and {r["group_hash"] for r in trial} == {f"g{n}"}
        assert all(r["status"] == "ok" and r["extra"]["replicas"] == 4 for r in trial)
        assert {(r["config"]["optim"]["lr"], r["config"]["regularizer"]["dropout"]["p"]) for r in trial} == {(lr, p)}
        assert all((tmp_path / r["run_id"] / "results.json").exists() for r in trial)
    assert len({r["run_id"] for t in recs for r in t}) == 4
    assert app.train_trials(cfgs, [0, 1], tmp_path, ["g0", "g1"], False, "t") == recs and calls == [4]  # read back


def test_two_trials_that_drew_the_same_values_are_one_run_trained_once(tmp_path, monkeypatch):
    from regbench import app
    from regbench.tuning.study import _marked

    base = compose(["regularizer=dropout", *TINY_TUNED])
    cfgs = [_marked(base, {"optim.lr": 0.003, "regularizer.dropout.p": 0.2}, "tune", n, "s") for n in (0, 1)]
    calls = []
    real = app.train_population
    monkeypatch.setattr(app, "train_population", lambda c, r, d, label: calls.append(len(d)) or real(c, r, d, label))
    a, b = app.train_trials(cfgs, [0, 1], tmp_path, ["g0", "g1"], True, "t")
    assert calls == [2] and a == b and len(list(tmp_path.rglob("results.json"))) == 2


def test_a_population_of_trials_that_fails_whole_is_trained_again_one_trial_at_a_time(tmp_path):
    """A failure of the population (not of a trial) must not cost every trial in it the budget."""
    import optuna

    from regbench.tuning.study import run_study

    calls: list = []
    fake = _fake_trainer(calls)

    def fails_together(cfgs, seeds, *a):
        if len(cfgs) > 1:
            calls.append(len(cfgs))
            return [[{"status": "failed", "run_id": f"x{c.protocol.trial}-{s}", "metrics": {}} for s in seeds]
                    for c in cfgs]
        return fake(cfgs, seeds, *a)

    cfg = compose(["regularizer=dropout", *TINY_TUNED, "protocol.trials=4", "protocol.sampler=random"])
    assert run_study(cfg, tmp_path / "s", fails_together)[0] == "ok"
    assert calls == [4, 1, 1, 1, 1, 1]  # the population, each trial alone, the final seeds
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4


def _fake_trainer(calls: list):
    """A trainer for run_study that trains nothing: each config's score is a fixed function of its values."""
    def train(cfgs, seeds, out_dir, hashes, stack, label):
        calls.append(len(cfgs))
        out = []
        for c in cfgs:
            lr, p = c.optim.lr, c.regularizer.dropout.p
            score = 1 - abs(math.log10(lr) + 2.5) / 3 - abs(p - 0.3)
            out.append([{"status": "ok", "run_id": f"{c.protocol.role}-{c.protocol.trial}-{s}",
                         "metrics": {"val/acc": score, "test/acc": score}} for s in seeds])
        return out
    return train


@pytest.mark.parametrize("sampler,batches", [("tpe", [10, 1, 1, 1, 1]), ("random", [14])])
def test_independent_trials_are_asked_together_and_get_the_values_one_at_a_time_would(tmp_path, sampler, batches):
    """TPE's 10 random start-up trials (every trial of a random search) in one call of the trainer,
    the informed ones one at a time; the trials' values, scores and the chosen one equal a study that
    asks one trial at a time."""
    import optuna

    from regbench.tuning.study import run_study

    studies = {}
    for stack_trials in (16, 1):
        cfg = compose(["regularizer=dropout", *TINY_TUNED, "protocol.trials=14", f"protocol.sampler={sampler}",
                       f"protocol.stack_trials={stack_trials}"])
        calls: list = []
        folder = tmp_path / str(stack_trials)
        status, best = run_study(cfg, folder, _fake_trainer(calls))
        assert status == "ok"
        assert calls == (batches if stack_trials > 1 else [1] * 14) + [1]  # the last: the final seeds
        study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")
        studies[stack_trials] = ([(t.number, t.params, t.value, t.state.name) for t in study.trials], best)
    assert studies[16] == studies[1]
    assert len({json.dumps(t[1], sort_keys=True) for t in studies[1][0]}) == 14


def test_a_batch_of_trials_interrupted_by_a_kill_is_asked_again_whole(tmp_path):
    import optuna

    from regbench.tuning.study import run_study

    cfg = compose(["regularizer=dropout", *TINY_TUNED, "protocol.trials=12"])
    folder = tmp_path / "s"

    def killed(*a):
        raise KeyboardInterrupt  # the process dies mid-population: its trials stay RUNNING

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, folder, killed)
    calls: list = []
    assert run_study(cfg, folder, _fake_trainer(calls))[0] == "ok"
    trials = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}").trials
    lost = [t for t in trials[:10]]
    assert all(t.state.name == "FAIL" and t.user_attrs["interrupted"] for t in lost)
    assert calls[0] == 10 and [t.params for t in trials[10:20]] == [t.params for t in lost]  # asked again, whole
    assert sum(t.state.name == "COMPLETE" for t in trials) == 12


# ------------------------------------------------------------------------ the test split
def test_selection_ignores_the_test_split(tmp_path, monkeypatch):
    """A planted permutation of the test labels changes every test metric and no choice."""
    import regbench.data
    from regbench.naming import study_name
    from regbench.app import train_trials
    from regbench.tuning.study import run_study

    cfg = compose(["regularizer=dropout", *TINY_TUNED])

    def chosen(folder: Path):
        status, best = run_study(cfg, folder / study_name(cfg), train_trials)
        assert status == "ok"
        recs = records(folder)
        trials = sorted((x["config"]["protocol"]["trial"], x["seed"], x["config"]["optim"]["lr"],
                         x["config"]["regularizer"]["dropout"]["p"], x["metrics"]["val/acc"])
                        for x in recs if role(x) == "tune")
        final = sorted((x["seed"], x["config"]["optim"]["lr"], x["config"]["regularizer"]["dropout"]["p"],
                        x["config"]["protocol"]["trial"]) for x in recs if role(x) == "final")
        tests = sorted((x["run_id"], x["metrics"]["test/acc"]) for x in recs)
        return best, trials, final, tests

    plain = chosen(tmp_path / "plain")
    build = regbench.data.build_data

    def permuted_test_labels(*a, **kw):
        d = build(*a, **kw)
        g = torch.Generator().manual_seed(123)
        return dataclasses.replace(d, y_test=d.y_test[torch.randperm(len(d.y_test), generator=g)])

    monkeypatch.setattr(regbench.data, "build_data", permuted_test_labels)
    shuffled = chosen(tmp_path / "shuffled")
    assert shuffled[:3] == plain[:3]  # the same trials, scores, chosen config and final runs
    assert [t for _, t in shuffled[3]] != [t for _, t in plain[3]]  # ... while the test split did change


# ---------------------------------------------------------------------- Hydra's Optuna sweeper
def test_the_optuna_sweeper_drives_run_py_and_gets_floats(tmp_path):
    r = cli("hparams_search=dropout_optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=2",
            "trainer.progress_every=0", f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "hparams_dropout"
    trials = trials_of(sweep / "optuna.db")
    assert [s for _, s, _, _ in trials] == ["COMPLETE", "COMPLETE"]
    recs = records(sweep)
    assert len(recs) == 2 * 3
    for _, _, value, params in trials:  # each objective: the mean val/acc of the trial's 3 stacked seeds
        mine = [x for x in recs if x["config"]["regularizer"]["dropout"]["p"] == params["regularizer.dropout.p"]]
        assert len(mine) == 3 and value == pytest.approx(np.mean([x["metrics"]["val/acc"] for x in mine]))
    # the runs' status is still counted by the sweep's status line
    assert "sweep finished: 2 runs: 2 ok" in r.stderr
    assert "Best value" in r.stderr and (sweep / "optimization_results.yaml").exists()


# ------------------------------------------------------------------------------- bad input
BAD = [
    ("+regularizer.tune.dropout.pp={low:0.1,high:0.2}", "regularizer.tune.dropout.pp: unknown key regularizer.dropout.pp"),
    ("+regularizer.tune.dropout.p.lo=0.1", "regularizer.tune.dropout.p.lo: unknown key in a search range"),
    ("regularizer.tune.dropout.p.low=0.9", "regularizer.tune.dropout.p: empty or inverted range [0.9, 0.8]"),
    ("regularizer.tune.dropout.p.high=0.05", "regularizer.tune.dropout.p: empty or inverted range [0.05, 0.05]"),
    ("regularizer.tune.dropout.p.high=1.5", "regularizer.dropout.p=1.5 is out of range"),
    ("protocol.tune.optim.lr.low=0", "protocol.tune.optim.lr.low=0: a log range needs low > 0"),
    ("protocol.trials=0", "protocol.trials=0 is out of range: allowed [1, inf)"),
    ("protocol.final_seed_start=1", "protocol.tune_seeds and protocol.final_seeds overlap"),
    ("protocol.metric=val/f1", "protocol.metric='val/f1' is not allowed: choose one of val/acc"),
    ("protocol.metric=test/acc", "protocol.metric='test/acc' is not allowed"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_tuning_input_names_the_key(override, message):
    from regbench.config import ConfigError, validate
    from regbench.tuning.space import parse_space

    cfg = compose(["protocol=tuned", "regularizer=dropout", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
        parse_space(cfg)
    assert message in str(e.value)


@pytest.mark.parametrize("override, message", [BAD[0], BAD[6], BAD[7]])
def test_bad_tuning_input_exits_2_before_anything_runs(tmp_path, override, message):
    # one arm: overrides of an arm's own keys need that arm in the sweep's base config (Hydra composes
    # it before expanding `regularizer=a,b`)
    arms = "regularizer=dropout" if "regularizer." in override else "regularizer=none,dropout"
    r = cli("-m", "protocol=tuned", arms, override, f"runs_root={tmp_path}", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr
    assert not list(tmp_path.iterdir())  # nothing written
