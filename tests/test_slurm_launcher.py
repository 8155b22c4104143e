"""regbench's SLURM launcher without a cluster: the states it reads from SLURM's commands (stand-in
`sacct`, `squeue`, `scontrol` scripts), its wait loop, what it skips and what it records for a job
that died. `tests/test_cluster.py` runs the same code against a real cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from hydra_plugins.regbench_launcher.slurm_launcher import SlurmStates, is_lost, wait_for_jobs


def fake_commands(tmp_path: Path, monkeypatch, **scripts: str) -> None:
    """Shell scripts named like SLURM's commands, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_states_come_from_sacct_with_pending_array_ranges_expanded(tmp_path, monkeypatch):
    fake_commands(tmp_path, monkeypatch, sacct="""cat <<'EOF'
JobID|State
12_0|COMPLETED
12_1|CANCELLED by 0
12_2|OUT_OF_MEMORY
12_3|TIMEOUT
12_4|NODE_FAIL
12_[5-6%2]|PENDING
EOF""")
    states = SlurmStates()
    ids = [f"12_{k}" for k in range(8)]
    assert states(ids) == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "OUT_OF_MEMORY", "12_3": "TIMEOUT",
                           "12_4": "NODE_FAIL", "12_5": "PENDING", "12_6": "PENDING"}  # 12_7: not known yet
    assert states.accounting is True


def test_without_accounting_states_come_from_squeue_then_scontrol(tmp_path, monkeypatch, caplog):
    fake_commands(tmp_path, monkeypatch,
                  sacct="echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1",
                  squeue="echo '12_0|RUNNING'; echo '12_3|PENDING'",
                  scontrol="""case "$4" in
12_1) echo 'JobId=13 ArrayJobId=12 ArrayTaskId=1 JobName=run JobState=OUT_OF_MEMORY Reason=OutOfMemory' ;;
*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;
esac""")
    states = SlurmStates()
    assert states(["12_0", "12_1", "12_2", "12_3"]) == {
        "12_0": "RUNNING", "12_1": "OUT_OF_MEMORY", "12_2": "UNKNOWN", "12_3": "PENDING"}  # 12_2: forgotten
    assert states.accounting is False and "no SLURM accounting?" in caplog.text


class FakeJob:
    def __init__(self, tmp_path: Path, job_id: str, result=None):
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=tmp_path / f"{job_id}.pkl", stderr=tmp_path / f"{job_id}.err")
        self._result = result

    def finish(self):
        self.paths.result_pickle.touch()

    def results(self):
        return [self._result]


@pytest.mark.parametrize("state", ["CANCELLED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "UNKNOWN"])
def test_a_job_in_a_final_state_without_a_result_is_lost_after_the_grace_the_others_are_waited_for(tmp_path, state):
    done, dead, late = FakeJob(tmp_path, "7_0", "r0"), FakeJob(tmp_path, "7_1"), FakeJob(tmp_path, "7_2", "r2")
    done.finish()
    calls = []

    def states(ids):  # 7_2 pending, running, then requeued, running again, then done
        calls.append(list(ids))
        n = len(calls)
        if n == 6:
            late.finish()
        return {"7_1": state, "7_2": ["PENDING", "RUNNING", "REQUEUED", "RUNNING", "RUNNING"][min(n, 5) - 1]}

    out = wait_for_jobs([done, dead, late], poll_s=0.01, state_poll_s=0.02, result_grace_s=0.05, states=states)
    assert out[0] == "r0" and out[2] == "r2"
    assert is_lost(out[1]) and f"SLURM job 7_1 ended {state} without a result" in out[1]
    assert all("7_0" not in ids for ids in calls)  # a job with its result is not asked about


def test_a_job_that_comes_back_from_a_final_state_is_not_lost(tmp_path):
    """A preempted job is requeued: PREEMPTED, then PENDING again for longer than the grace. Its grace
    starts over when it ends again, so its result, written just after, is collected."""
    job = FakeJob(tmp_path, "8_0", "r")
    seq = ["RUNNING", "PREEMPTED", *["PENDING"] * 15, "RUNNING", "COMPLETED"]
    calls = []

    def states(ids):
        calls.append(ids)
        if len(calls) > len(seq):
            job.finish()
        return {"8_0": seq[min(len(calls), len(seq)) - 1]}

    assert wait_for_jobs([job], poll_s=0.005, state_poll_s=0.02, result_grace_s=0.2, states=states) == ["r"]


def test_a_job_whose_result_is_submitits_error_is_lost_with_the_error_and_state(tmp_path):
    class Failing(FakeJob):
        def results(self):
            raise RuntimeError("Job (task=0) failed during processing with trace:\n----\nTraceback...\n"
                               "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.\n----")

    job = Failing(tmp_path, "9_0")
    job.finish()
    (out,) = wait_for_jobs([job], poll_s=0.01, state_poll_s=0.01, states=lambda ids: {"9_0": "TIMEOUT"})
    assert is_lost(out) and "ended TIMEOUT" in out and "timed-out too many times" in out


def sweep_config(tmp_path: Path, *overrides: str):
    """A job's composed sweep config, with its hydra node, as the launcher loads it."""
    from hydra import compose, initialize_config_dir

    from regbench.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"runs_root={tmp_path}"],
                       return_hydra_config=True)


def test_a_job_is_finished_only_when_each_of_its_records_says_ok_under_its_own_run_id(tmp_path):
    from regbench import jobs
    from regbench.records import empty_record, write_record

    cfg = sweep_config(tmp_path, "seed=2", "regularizer=dropout")
    (run_dir,) = jobs.run_dirs(cfg)
    assert run_dir.parent == tmp_path / "default" and run_dir.name.startswith("mnist1d-mlp-dropout-p0.5-s2-")
    assert not jobs.finished(cfg)
    write_record(run_dir, {**empty_record(), "status": "failed", "run_id": run_dir.name})
    assert not jobs.finished(cfg)
    write_record(run_dir, {**empty_record(), "status": "ok", "run_id": "another-run"})  # copied from elsewhere
    assert not jobs.finished(cfg)
    write_record(run_dir, {**empty_record(), "status": "ok", "run_id": run_dir.name})
    assert jobs.finished(cfg)
    assert not jobs.finished(sweep_config(tmp_path, "seed=2", "regularizer=dropout", "force=true"))

    group = sweep_config(tmp_path, "seed=4", "replicas=3")
    dirs = jobs.run_dirs(group)
    assert [d.name.split("-s")[1][0] for d in dirs] == ["4", "5", "6"] and len(set(dirs)) == 3
    for d in dirs[:2]:
        write_record(d, {**empty_record(), "status": "ok", "run_id": d.name})
    assert not jobs.finished(group)  # one seed of the group is missing: the whole group is submitted
    write_record(dirs[2], {**empty_record(), "status": "ok", "run_id": dirs[2].name})
    assert jobs.finished(group)


def test_a_lost_job_gets_a_failed_record_per_missing_run_pooled_with_its_arm(tmp_path):
    from regbench import jobs
    from regbench.naming import group_hash
    from regbench.records import empty_record, read_record, write_record
    from regbench.rundir import RunLock

    group = sweep_config(tmp_path, "seed=0", "replicas=3", "regularizer=dropout")
    dirs = jobs.run_dirs(group)
    write_record(dirs[0], {**empty_record(), "status": "ok", "run_id": dirs[0].name})
    dirs[2].mkdir(parents=True)
    held = RunLock(dirs[2])
    assert held.acquire()  # a live process still trains seed 2: not recorded over it
    try:
        written = jobs.record_lost(group, "SLURM job 5_0 ended OUT_OF_MEMORY without a result")
    finally:
        held.release()
    assert written == [dirs[1].name]
    assert read_record(dirs[0] / "results.json")["status"] == "ok"  # an ok record is never overwritten
    rec = read_record(dirs[1] / "results.json")
    assert rec["status"] == "failed" and "OUT_OF_MEMORY" in rec["error"] and rec["seed"] == 1
    assert rec["run_id"] == dirs[1].name and rec["regularizer"] == "dropout"
    task = OmegaConf.merge(jobs.task_config(group), {"seed": 1})
    assert rec["group_hash"] == group_hash(task) == group_hash(jobs.task_config(group))
    assert not (dirs[2] / "results.json").exists()
    assert json.loads((dirs[1] / "results.json").read_text())["config"]["seed"] == 1


def test_inside_a_slurm_job_lightning_does_not_requeue(monkeypatch):
    """One requeue mechanism: submitit's. Lightning's SLURM environment is used without auto-requeue."""
    from regbench.app import slurm_plugins

    assert slurm_plugins() == [] or "SLURM_NTASKS" in os.environ
    for k, v in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "run", "SLURM_JOB_ID": "41", "SLURM_NODELIST": "vm",
                 "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(k, v)
    (env,) = slurm_plugins()
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False

    import signal

    import pytorch_lightning as pl

    trainer = pl.Trainer(plugins=slurm_plugins(), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    before = signal.getsignal(signal.SIGUSR1)
    trainer._signal_connector.register_signal_handlers()
    try:
        assert signal.getsignal(signal.SIGUSR1) is before  # no handler of Lightning's for the requeue signal
    finally:
        trainer._signal_connector.teardown()
