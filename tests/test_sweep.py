"""The sweep callback's clean-up of the joblib launcher's workers."""

import os

from joblib import Parallel, delayed
from joblib.externals.loky import reusable_executor

from conftest import CONF
from regbench.sweep import _release_idle_workers, planned_jobs, progress_line


def test_idle_joblib_workers_are_ended_when_the_sweep_ends():
    pids = Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in range(4))
    executor = reusable_executor._executor
    workers = list(executor._processes.values())
    assert workers and {p.pid for p in workers} >= set(pids) - {os.getpid()}
    _release_idle_workers()
    for p in workers:
        p.join(timeout=10)
        assert not p.is_alive()
    # joblib starts a fresh executor for the next sweep in the same process
    assert sorted(Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(3))) == [0, 1, 2]


def test_nothing_to_release_without_joblib(monkeypatch):
    """Another launcher: loky never imported (it is not imported here either), or imported but idle."""
    import sys

    monkeypatch.delitem(sys.modules, "joblib.externals.loky.reusable_executor")
    _release_idle_workers()
    assert "joblib.externals.loky.reusable_executor" not in sys.modules
    monkeypatch.undo()
    monkeypatch.setattr(reusable_executor, "_executor", None)
    _release_idle_workers()  # no executor: returns without starting one
    assert reusable_executor._executor is None


def test_progress_line_counts_statuses_and_extrapolates_the_eta():
    line = progress_line(["ok", "failed", "ok"], "8", start="100.0", now=130.0)
    # 3 of 8 in 30 s: 10 s a run, 5 left
    assert line == "sweep progress: 3/8 runs done (2 ok, 1 failed), elapsed 0:30, ETA 0:50"
    assert progress_line(["ok"], "", "100.0", now=101.0) == "sweep progress: 1/? runs done (1 ok), elapsed 0:01"


def _hydra_config(sweep, preset=None):
    """The config a multirun's callbacks get: composed with `preset`, the command line's sweep overrides
    in hydra.overrides.task."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from regbench.naming import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"] if preset else [],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = sweep
    return cfg


def test_planned_jobs_expands_the_command_line_and_a_preset_sweep():
    assert planned_jobs(_hydra_config(["regularizer=none,dropout", "seed=range(3)"])) == 6
    assert planned_jobs(_hydra_config(["seed=0"])) == 1
    # the study preset's grid lives in hydra.sweeper.params: 8 settings x 7 arms x 10 seeds
    assert planned_jobs(_hydra_config(["experiment=dropout_vs_early_stopping"], "dropout_vs_early_stopping")) == 560
