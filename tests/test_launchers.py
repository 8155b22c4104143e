"""Parallel and cluster launchers: joblib on this machine's cores, submitit locally, SLURM configured."""

from __future__ import annotations

import json

from conftest import CONF, cli, tiny


def run_records(root):
    return [json.loads(p.read_text()) for p in root.rglob("results.json")]


def test_joblib_launcher_runs_the_sweep_in_parallel_worker_processes(tmp_path):
    r = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", *tiny(),
            f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = run_records(tmp_path)
    assert sorted(x["seed"] for x in recs) == [0, 1, 2, 3] and all(x["status"] == "ok" for x in recs)
    assert len({x["extra"]["pid"] for x in recs}) == 2  # two worker processes shared the four runs
    assert all(x["extra"]["threads"] == 1 for x in recs)  # jobs x threads never exceeds the 2 cores
    assert "sweep finished: 4 runs: 4 ok" in r.stderr
    assert (tmp_path / "default" / "per_arm.md").exists()
    # the workers report progress as their jobs end (joblib itself prints nothing between launch and end)
    import re

    done = [int(m) for m in re.findall(r"sweep progress: (\d)/4 runs done \(\d ok\), elapsed \d+:\d\d, ETA \d+:\d\d", r.stderr)]
    assert sorted(done) == [1, 2, 3, 4]


def test_submitit_local_runs_each_job_as_its_own_process(tmp_path):
    r = cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=0,1", *tiny(),
            f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = run_records(tmp_path)
    assert sorted(x["seed"] for x in recs) == [0, 1] and all(x["status"] == "ok" for x in recs)
    assert len({x["extra"]["pid"] for x in recs}) == 2
    assert list((tmp_path / "default" / ".submitit").iterdir())


def test_slurm_launcher_is_configured_with_defaults_and_partition_from_the_environment(monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from regbench.naming import register_resolvers

    register_resolvers()
    monkeypatch.setenv("SLURM_PARTITION", "cpu-short")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.regbench_launcher.slurm_launcher.RegbenchSlurmLauncher"
    from hydra.core.plugins import Plugins

    assert launcher._target_ in Plugins.instance().class_name_to_class  # Hydra found the plugin
    assert launcher.result_grace_s == 30 and launcher.array_parallelism == 64
    assert launcher.partition == "cpu-short"
    assert launcher.timeout_min == 60 and launcher.cpus_per_task == 1
    assert OmegaConf.select(cfg, "trainer.threads") == launcher.cpus_per_task
