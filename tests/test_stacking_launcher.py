"""The stacking launcher (hydra/launcher=regbench): a sweep's compatible jobs train as one population.

Most tests run the real command line with a stand-in for `regbench.app.run_group`
(tests/stacking/sitecustomize.py: it records each call and writes records, training nothing) and a
probe callback (tests/stacking/probe.py) that logs every JobReturn the sweep's callbacks get: the
launcher's grouping, folders, Hydra jobs, statuses, objectives and exit status are real. The test
marked `engine` trains a real population; it is skipped until regbench.engine.optim is importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, cli, compose

FAKE = ROOT / "tests" / "stacking"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sweep(tmp_path: Path, *args: str, status: str = "", fake: bool = True, launcher: str = "regbench"):
    """`python run.py -m hydra/launcher=LAUNCHER ARGS` with the stand-in run_group (when `fake`) and
    the probe; returns (process, run_group calls, ended jobs by run folder name)."""
    groups, probe = tmp_path / "groups.jsonl", tmp_path / "probe.jsonl"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(FAKE), os.environ.get("PYTHONPATH")) if p),
           "REGBENCH_TEST_PROBE": str(probe), "REGBENCH_TEST_GROUP_STATUS": status}
    if fake:
        env["REGBENCH_TEST_GROUPS"] = str(groups)
    r = cli("-m", f"hydra/launcher={launcher}", "+hydra.callbacks.probe._target_=probe.Probe", "~hydra.callbacks.report",
            "trainer.max_epochs=1", "trainer.progress_every=0", *args, f"runs_root={tmp_path / 'runs'}", env=env)
    ends = [e for e in _jsonl(probe) if e["event"] == "end"]
    assert len({e["num"] for e in ends}) == len(ends), "a job was reported twice"
    return r, _jsonl(groups), {e["run"]: e for e in ends}


def record_config(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())["config"]


def test_jobs_differing_only_in_stackable_keys_share_one_run_group_call_with_their_own_folders(tmp_path):
    r, calls, jobs = sweep(tmp_path, "regularizer=dropout", "model=mlp,resmlp", "trainer.max_epochs=1,2",
                           "regularizer.dropout.p=0.1,0.3", "seed=0,1", status="1=diverged")
    assert r.returncode == 0, r.stderr[-3000:]  # a diverged run is not a failure
    # model and max_epochs split populations; seed and p do not: 4 populations of 4 jobs
    assert len(calls) == 4 and all(len(c["dirs"]) == 4 and not c["keep_whole"] for c in calls)
    for c in calls:
        configs = [record_config(d) for d in c["dirs"]]
        assert len({(x["model"]["name"], x["trainer"]["max_epochs"]) for x in configs}) == 1
        assert sorted((x["seed"], x["regularizer"]["dropout"]["p"]) for x in configs) == [
            (0, 0.1), (0, 0.3), (1, 0.1), (1, 0.3)]
    # each job's folder is the one Hydra names for it (its run id), given to run_group exactly once
    folders = [Path(d) for c in calls for d in c["dirs"]]
    assert sorted(d.name for d in folders) == sorted(jobs) and len(set(folders)) == 16
    assert all(d.parent == tmp_path / "runs" / "default" for d in folders)
    # one JobReturn per job with its own status and objective (protocol.metric of its record)
    assert sorted(e["num"] for e in jobs.values()) == list(range(16))
    for d in folders:
        job, cfg = jobs[d.name], record_config(str(d))
        assert job["job_status"] == "COMPLETED" and job["seed"] == cfg["seed"]
        if cfg["seed"] == 1:
            assert job["status"] == "diverged" and job["objective"] is None
        else:
            assert job["status"] == "ok" and job["objective"] == pytest.approx(cfg["regularizer"]["dropout"]["p"])
    assert "sweep finished: 16 runs: 8 ok, 8 diverged" in r.stderr
    assert "sweep progress: 16/16 runs done" in r.stderr


def test_max_population_cuts_a_group_in_sweep_order(tmp_path):
    r, calls, jobs = sweep(tmp_path, "hydra.launcher.max_population=4", "optim.lr=0.001,0.01", "seed=0,1,2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [len(c["dirs"]) for c in calls] == [4, 2]  # lr differs too: all six share one group key
    assert [(s, record_config(d)["optim"]["lr"]) for c in calls for s, d in zip(c["seeds"], c["dirs"])] == [
        (0, 0.001), (1, 0.001), (2, 0.001), (0, 0.01), (1, 0.01), (2, 0.01)]
    assert len(jobs) == 6 and {e["status"] for e in jobs.values()} == {"ok"}


def test_an_invalid_job_is_rejected_alone_and_the_sweep_exits_1(tmp_path):
    r, calls, jobs = sweep(tmp_path, "regularizer=dropout", "regularizer.dropout.p=0.2,1.5,0.3")
    assert r.returncode == 1
    assert "regularizer.dropout.p=1.5 is out of range: allowed [0, 1)" in r.stderr
    assert len(calls) == 1 and [record_config(d)["regularizer"]["dropout"]["p"] for d in calls[0]["dirs"]] == [0.2, 0.3]
    assert sorted(e["status"] for e in jobs.values()) == ["ok", "ok", "rejected"]
    assert "2 ok, 1 rejected (invalid config)" in r.stderr
    assert not [p for p in (tmp_path / "runs" / "default").iterdir() if "p1.5" in p.name]  # no folder left


def test_replica_jobs_are_not_grouped_with_each_other(tmp_path):
    # replicas=2 jobs are populations already: each is one job through app.run (run_replicas -> run_group whole)
    r, calls, jobs = sweep(tmp_path, "replicas=2", "seed=0,2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(c["seeds"] for c in calls) == [[0, 1], [2, 3]] and all(c["keep_whole"] for c in calls)
    assert len(jobs) == 2


def test_parallel_workers_each_train_a_population(tmp_path):
    r, calls, jobs = sweep(tmp_path, "hydra.launcher.n_jobs=2", "seed=0,1,2,3")
    assert r.returncode == 0, r.stderr[-3000:]
    # four stackable jobs on two workers: two populations of two, in two worker processes
    assert sorted(c["seeds"] for c in calls) == [[0, 1], [2, 3]]
    assert len({c["pid"] for c in calls}) == 2
    assert len(jobs) == 4 and "sweep finished: 4 runs: 4 ok" in r.stderr


def test_stack_key_groups_stackable_differences_and_leaves_tuned_replicas_and_invalid_jobs_alone():
    from hydra_plugins.regbench_launcher.stacking_launcher import stack_key

    base = stack_key(compose(["regularizer=dropout"]))
    assert base is not None
    for same in (["seed=3"], ["regularizer.dropout.p=0.2"], ["optim.lr=0.003"], ["regularizer.dropout.input_p=0.2"]):
        assert stack_key(compose(["regularizer=dropout", *same])) == base, same
    for other in (["model=resmlp"], ["trainer.max_epochs=7"], ["optim.batch_size=64"], ["data.train_size=500"]):
        assert stack_key(compose(["regularizer=dropout", *other])) not in (None, base), other
    for alone in (["protocol=tuned"], ["replicas=2"], ["regularizer.dropout.p=1.5"]):
        assert stack_key(compose(["regularizer=dropout", *alone])) is None, alone
    # a tuned protocol's trial (a role is set) is an ordinary run and may stack
    assert stack_key(compose(["regularizer=dropout", "protocol=tuned", "+protocol.role=final"])) is not None


def test_plan_units_keeps_sweep_order_caps_groups_and_fills_workers():
    from hydra_plugins.regbench_launcher.stacking_launcher import plan_units

    keys = ["a", "b", "a", None, "a", "b", "a"]
    assert plan_units(keys, 64) == [[0, 2, 4, 6], [1, 5], [3]]
    assert plan_units(keys, 3) == [[0, 2, 4], [1, 5], [3], [6]]
    assert plan_units(["a"] * 4, 64, workers=2) == [[0, 1], [2, 3]]
    assert plan_units(["a"] * 5, 64, workers=3) == [[0, 1], [2], [3, 4]]
    assert plan_units(["a", None], 64, workers=4) == [[0], [1]]  # never more units than jobs
    with pytest.raises(ValueError, match=r"hydra.launcher.max_population=0 is out of range: allowed >= 1"):
        plan_units(keys, 0)


def test_multirun_defaults_to_the_stacking_launcher():
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.plugins import Plugins

    from regbench.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target == "hydra_plugins.regbench_launcher.stacking_launcher.StackingLauncher"
    assert target in Plugins.instance().class_name_to_class  # Hydra found the plugin
    assert cfg.hydra.launcher.max_population == 64 and cfg.hydra.launcher.n_jobs == 1


ENGINE = importlib.util.find_spec("regbench.engine.optim") is not None


@pytest.mark.engine
@pytest.mark.skipif(not ENGINE, reason="the population engine (regbench.engine.optim, StackedOptimizer) is not "
                                       "merged yet: enable by merging it")
def test_the_default_multirun_trains_one_population_with_one_ordinary_record_per_job(tmp_path):
    root = tmp_path / "runs"
    r = cli("-m", "regularizer=dropout", "regularizer.dropout.p=0.1,0.3", "seed=0,1", "trainer.max_epochs=1",
            "trainer.progress_every=0", f"runs_root={root}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {p.parent.name: json.loads(p.read_text()) for p in root.rglob("results.json")}
    assert sorted((x["seed"], x["config"]["regularizer"]["dropout"]["p"]) for x in recs.values()) == [
        (0, 0.1), (0, 0.3), (1, 0.1), (1, 0.3)]
    assert all(x["status"] == "ok" and x["extra"].get("engine") == "population" for x in recs.values())
    assert all(name == x["run_id"] for name, x in recs.items())  # each in the folder Hydra names for its job
    assert len({x["extra"]["pid"] for x in recs.values()}) == 1  # one process trained them
    assert "4 jobs as one population" in r.stderr and "sweep finished: 4 runs: 4 ok" in r.stderr
    again = cli("-m", "regularizer=dropout", "regularizer.dropout.p=0.1,0.3", "seed=0,1", "trainer.max_epochs=1",
                "trainer.progress_every=0", f"runs_root={root}")
    assert again.returncode == 0 and "sweep finished: 4 runs: 4 skipped (already ok)" in again.stderr


def test_run_group_trains_the_runs_it_can_claim_and_leaves_a_held_one_busy(tmp_path, monkeypatch):
    """Two sweeps that overlap (seed=0,1,2 and seed=2,3,4): a group whose one run another process
    holds trains the others, and reports only that one busy (it is the other sweep's to write)."""
    from omegaconf import OmegaConf

    from regbench import app
    from regbench.naming import run_id
    from regbench.rundir import RunLock

    trained = []

    def fake_population(cfgs, rcs, dirs, label):  # no engine needed: the bookkeeping is the point
        trained.append([int(c.seed) for c in cfgs])
        return [{"status": "ok", "metrics": {"test/acc": 0.9, "train/acc": 0.9}} for _ in cfgs]

    monkeypatch.setattr(app, "train_population", fake_population)
    base = compose(["trainer.max_epochs=1", f"runs_root={tmp_path}"])
    cfgs = [OmegaConf.merge(base, {"seed": s}) for s in (0, 1, 2)]
    dirs = [tmp_path / "default" / run_id(c) for c in cfgs]
    dirs[1].mkdir(parents=True)
    other = RunLock(dirs[1])
    assert other.acquire()
    try:
        assert app.run_group(cfgs, dirs, label="test") == ["ok", "busy", "ok"]
    finally:
        other.release()
    assert trained == [[0, 2]]
    assert [(d / "results.json").exists() for d in dirs] == [True, False, True]


def test_on_slurm_each_population_is_one_job(tmp_path, monkeypatch):
    """hydra/launcher=slurm with max_population > 1, through a stand-in for SLURM that runs each
    submitted task at once in the sweep's process (tests/stacking/sitecustomize.py)."""
    monkeypatch.setenv("REGBENCH_TEST_FAKE_SLURM", str(tmp_path / "slurm.jsonl"))
    r, calls, jobs = sweep(tmp_path, "hydra.launcher.max_population=64",
                           "regularizer=dropout", "regularizer.dropout.p=0.1,0.2", "seed=0,1,2", "model=mlp,resmlp",
                           status="2=diverged", launcher="slurm")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _jsonl(tmp_path / "slurm.jsonl") == [{"tasks": 2, "fn": "UnitJob"}]  # one array, a task per population
    assert sorted(len(c["dirs"]) for c in calls) == [6, 6]
    assert sorted(Path(d).name for c in calls for d in c["dirs"]) == sorted(jobs)
    assert sorted(e["status"] for e in jobs.values()) == ["diverged"] * 4 + ["ok"] * 8
    again = cli("-m", "hydra/launcher=slurm", "hydra.launcher.max_population=64", "regularizer=dropout",
                "regularizer.dropout.p=0.1,0.2", "seed=0,1,2", "model=mlp,resmlp", "trainer.max_epochs=1",
                "trainer.progress_every=0", "~hydra.callbacks.report", f"runs_root={tmp_path / 'runs'}",
                env={"PYTHONPATH": os.pathsep.join(p for p in (str(FAKE), os.environ.get("PYTHONPATH")) if p),
                     "REGBENCH_TEST_GROUPS": str(tmp_path / "again.jsonl"),
                     "REGBENCH_TEST_FAKE_SLURM": str(tmp_path / "slurm.jsonl")})
    assert again.returncode == 0, again.stderr[-3000:]
    # the ok records are not submitted again; the diverged ones are (a rerun redoes what is not ok)
    assert _jsonl(tmp_path / "slurm.jsonl")[1:] == [{"tasks": 2, "fn": "UnitJob"}]
    assert sorted(len(c["dirs"]) for c in _jsonl(tmp_path / "again.jsonl")) == [2, 2]


def test_a_group_trained_separately_unlocks_each_run_when_it_is_written(tmp_path, monkeypatch):
    """A group the engine refuses (say trainer.checkpoint_every) trains its runs one after another:
    each finished run is unlocked at once, so a sweep killed during a later one leaves no stale lock."""
    from omegaconf import OmegaConf

    from regbench import app
    from regbench.naming import run_id
    from regbench.rundir import LOCK_FILE

    locked_while_training = []

    def fake_run(cfg, rc, run_dir, data=None):
        locked_while_training.append(sorted(d.name for d in dirs if (d / LOCK_FILE).exists()))
        return "ok"

    monkeypatch.setattr(app, "population_refusal", lambda rc: "test: trained separately")
    monkeypatch.setattr(app, "_run_locked", fake_run)
    base = compose(["trainer.max_epochs=1", f"runs_root={tmp_path}"])
    cfgs = [OmegaConf.merge(base, {"seed": s}) for s in (0, 1, 2)]
    dirs = [tmp_path / "default" / run_id(c) for c in cfgs]
    assert app.run_group(cfgs, dirs, label="test") == ["ok", "ok", "ok"]
    assert locked_while_training == [[d.name for d in dirs[k:]] for k in range(3)]


def test_a_config_named_twice_in_a_group_is_trained_once(tmp_path):
    r, calls, jobs = sweep(tmp_path, "regularizer=dropout", "regularizer.dropout.p=0.1,0.1,0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(calls) == 1 and [record_config(d)["regularizer"]["dropout"]["p"] for d in calls[0]["dirs"]] == [0.1, 0.2]
    ends = [e for e in _jsonl(tmp_path / "probe.jsonl") if e["event"] == "end"]
    assert [(e["num"], e["status"]) for e in sorted(ends, key=lambda e: e["num"])] == [(0, "ok"), (1, "skipped"), (2, "ok")]
    assert "sweep finished: 3 runs: 2 ok, 1 skipped (already ok)" in r.stderr


def test_the_optuna_sweeper_gets_each_trials_own_objective(tmp_path):
    """hydra/sweeper=optuna hands the launcher a batch of trials; they stack, and each trial's value
    is its own record's protocol.metric (the stand-in writes seed / 100 + p, here p)."""
    import yaml

    r, calls, jobs = sweep(tmp_path, "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize",
                           "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3", "hydra.sweeper.sampler.seed=1",
                           "regularizer=dropout", "regularizer.dropout.p=interval(0.05, 0.8)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [len(c["dirs"]) for c in calls] == [3, 3]  # two batches, each one population
    ps = {name: record_config(str(tmp_path / "runs" / "default" / name))["regularizer"]["dropout"]["p"] for name in jobs}
    assert all(e["objective"] == pytest.approx(ps[name]) for name, e in jobs.items())
    best = yaml.safe_load((tmp_path / "runs" / "default" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(ps.values()))
    assert best["best_params"]["regularizer.dropout.p"] == pytest.approx(max(ps.values()))


@pytest.mark.engine
@pytest.mark.skipif(not ENGINE, reason="the population engine (regbench.engine.optim, StackedOptimizer) is not "
                                       "merged yet: enable by merging it")
def test_two_overlapping_stacked_sweeps_give_every_run_once(tmp_path):
    import re
    import subprocess
    import sys

    common = [sys.executable, str(ROOT / "run.py"), "-m", "trainer.max_epochs=3", "trainer.progress_every=0",
              f"runs_root={tmp_path}"]
    a = subprocess.Popen([*common, "seed=0,1,2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([*common, "seed=2,3,4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (_, ea), (_, eb) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, ea[-2000:] + eb[-2000:]
    recs = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert sorted(x["seed"] for x in recs) == [0, 1, 2, 3, 4] and all(x["status"] == "ok" for x in recs)
    # seed 2 was trained by one sweep; the other counted it busy or skipped, never ok
    oks = [int(m) for e in (ea, eb) for m in re.findall(r"sweep finished: 3 runs: (\d) ok", e)]
    assert sum(oks) == 5, ea[-1500:] + eb[-1500:]
