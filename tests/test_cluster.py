"""Sweeps through a real SLURM cluster (`make test-cluster`; `scripts/slurm-local.sh start` makes one
on this machine). Every test submits real jobs with `hydra/launcher=slurm` and reads what SLURM,
the records and the sweep say. Skipped, with the reason, when no cluster answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, python, tiny

pytestmark = pytest.mark.cluster


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM cluster: `sinfo` not found (start one as root: scripts/slurm-local.sh start)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if r.returncode != 0 or not {"idle", "mixed", "allocated"} & set(r.stdout.split()):
        return f"no SLURM node up: sinfo says {(r.stdout + r.stderr).strip()!r} (scripts/slurm-local.sh start)"
    return None


@pytest.fixture(autouse=True, scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


# small jobs: 1 CPU (both cores run two jobs), 2 GB, a 10-min limit; a dead job is counted after 3 s
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=2",
         "hydra.launcher.result_grace_s=3", "hydra.launcher.state_poll_s=1", "hydra.launcher.poll_s=0.5"]


def records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("results.json")}


def submitted_jobs(sweep_dir: Path) -> set[str]:
    """The SLURM jobs submitit made for a sweep: one folder each under .submitit/, named by job id
    (`<array>_<task>` for a task of an array, whose `<array>` folder holds the array's sbatch file)."""
    folder = sweep_dir / ".submitit"
    names = {p.name for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()
    return {n for n in names if "_" in n or not any(m.startswith(n + "_") for m in names)}


def sacct(job: str, attempts: bool = False) -> list[dict]:
    """SLURM's accounting of a job (each task of an array); attempts: one line per run of a
    requeued job (sacct -D), not only its last."""
    r = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job, *(["-D"] if attempts else [])],
                       capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in r.stdout.splitlines() if line]
    return [{"id": job_id, "state": state.split()[0]} for job_id, state in rows]  # "CANCELLED by 0"


def final_states(job: str, tasks: int = 1, timeout: float = 60) -> list[str]:
    """The states of a job's `tasks` tasks once SLURM has recorded the end of each (a job's result
    file is written a moment before SLURM records its end)."""
    live = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}
    rows = wait_for(lambda: len(r := sacct(job)) == tasks and not live & {x["state"] for x in r} and r,
                    timeout, f"the {tasks} task(s) of job {job} to end")
    return [x["state"] for x in rows]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_sweep(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
        raise AssertionError(f"sweep did not end in {timeout} s:\n{out[-3000:]}")
    return out


def test_a_2_arm_x_2_seed_sweep_gives_4_records_and_the_report(tmp_path):
    r = cli("-m", *SLURM, "regularizer=none,dropout", "seed=0,1", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path)
    assert sorted((x["regularizer"], x["seed"]) for x in recs.values()) == [
        ("dropout", 0), ("dropout", 1), ("none", 0), ("none", 1)]
    assert all(x["status"] == "ok" for x in recs.values())
    sweep = tmp_path / "default"
    jobs = submitted_jobs(sweep)
    assert len(jobs) == 4 and len({j.split("_")[0] for j in jobs}) == 1  # one job array of 4 tasks
    assert final_states(next(iter(jobs)).split("_")[0], 4) == ["COMPLETED"] * 4
    assert "sweep finished: 4 runs: 4 ok" in r.stderr
    assert (sweep / "per_arm.md").exists() and "dropout" in (sweep / "per_arm.md").read_text()


# a run long enough to be cancelled while it trains and still be training when SLURM's SIGKILL comes
# KillWait (10 s) after the scancel (submitit's job bypasses the SIGTERM): ~25 s of training on an idle
# core (at 150 epochs, ~4 s, a quiet machine finished the run before the SIGKILL)
LONG = ["trainer.max_epochs=1000", "trainer.progress_every=0"]


@pytest.fixture(scope="module")
def cancelled_sweep(tmp_path_factory):
    """seed=0,1 through SLURM; seed 1's job is scancelled once its run has started training."""
    root = tmp_path_factory.mktemp("cancel")
    args = ["-m", *SLURM, "seed=0,1", *LONG, f"runs_root={root}"]
    proc = start_sweep(*args)
    sweep = root / "default"
    log = wait_for(lambda: next(iter(sweep.glob("*-s1-*/run.log")), None), 180, "seed 1 to start training")
    (job,) = [j for j in submitted_jobs(sweep) if j.endswith("_1")]  # seed=1 is the array's task 1
    subprocess.run(["scancel", job], check=True)
    out = finish(proc)
    return {"root": root, "sweep": sweep, "args": args, "out": out, "rc": proc.returncode, "job": job,
            "run": log.parent.name, "records": records(root)}


def test_a_cancelled_job_is_counted_failed_with_its_state_and_the_sweep_reports_and_exits_1(cancelled_sweep):
    c = cancelled_sweep
    assert c["rc"] == 1, c["out"][-3000:]
    assert "sweep finished: 2 runs: 1 ok, 1 failed" in c["out"], c["out"][-3000:]
    assert f"failed: {c['run']}" in c["out"]  # the summary names the run
    assert final_states(c["job"]) == ["CANCELLED"]
    lost = c["records"][c["run"]]
    assert lost["status"] == "failed" and f"SLURM job {c['job']} ended CANCELLED" in lost["error"]
    ok = next(x for name, x in c["records"].items() if name != c["run"])
    assert ok["status"] == "ok" and ok["seed"] == 0
    assert lost["group_hash"] == ok["group_hash"]  # counted in the same table row as its arm
    assert "excluded from statistics: 1 failed" in (c["sweep"] / "per_arm.md").read_text()


def test_the_rerun_trains_only_the_missing_run_and_submits_no_job_for_the_finished_one(cancelled_sweep):
    c = cancelled_sweep
    ok_name = next(name for name in c["records"] if name != c["run"])
    ok_file = c["sweep"] / ok_name / "results.json"
    before_bytes, before_jobs = ok_file.read_bytes(), submitted_jobs(c["sweep"])
    r = cli(*c["args"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 of 2 jobs already finished" in r.stderr
    assert "sweep finished: 2 runs: 1 ok, 1 skipped (already ok)" in r.stderr
    new_jobs = submitted_jobs(c["sweep"]) - before_jobs
    assert len(new_jobs) == 1  # one job, for the missing run; none for the finished one
    (job,) = new_jobs
    assert final_states(job) == ["COMPLETED"]
    assert ok_file.read_bytes() == before_bytes  # the finished run was not touched
    redone = records(c["root"])[c["run"]]
    assert redone["status"] == "ok" and redone["error"] is None


def test_a_requeued_job_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(tmp_path):
    args = ["seed=3", "regularizer=dropout", "trainer.max_epochs=200", "trainer.checkpoint_every=5",
            "trainer.progress_every=0"]
    # the uninterrupted run, outside SLURM, on the other core meanwhile
    whole = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"runs_root={tmp_path / 'whole'}"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = start_sweep("-m", *SLURM, *args, f"runs_root={tmp_path / 'slurm'}")
    sweep = tmp_path / "slurm" / "default"
    wait_for(lambda: list(sweep.rglob("last.ckpt")), 180, "the first checkpoint")
    (job,) = submitted_jobs(sweep)
    subprocess.run(["scontrol", "requeue", job], check=True)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert whole.wait(timeout=240) == 0
    assert final_states(job) == ["COMPLETED"]
    assert [s["state"] for s in sacct(job, attempts=True)] == ["REQUEUED", "COMPLETED"]
    (resumed,), (uninterrupted,) = records(sweep).values(), records(tmp_path / "whole").values()
    assert resumed["extra"]["resumed"] and not uninterrupted["extra"]["resumed"]
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    # one requeue mechanism: submitit's (the job ran twice); Lightning's auto-requeue stayed off
    log = (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert log.count("resuming from") == 1
    assert "SLURM auto-requeueing enabled" not in log


def test_a_group_of_stacked_seeds_goes_out_as_one_slurm_job(tmp_path):
    r = cli("-m", *SLURM, "seed=0", "replicas=4", "regularizer=dropout", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path).values()
    assert sorted(x["seed"] for x in recs) == [0, 1, 2, 3]
    assert all(x["status"] == "ok" and x["extra"]["engine"] == "population" for x in recs)
    assert len({x["extra"]["pid"] for x in recs}) == 1  # one process wrote the four records...
    sweep = tmp_path / "default"
    (job,) = submitted_jobs(sweep)  # ... in the one SLURM job submitted
    assert final_states(job) == ["COMPLETED"]
    # and a rerun submits nothing: all four records of the group are ok
    again = cli("-m", *SLURM, "seed=0", "replicas=4", "regularizer=dropout", *tiny(), f"runs_root={tmp_path}")
    assert again.returncode == 0 and "1 of 1 jobs already finished" in again.stderr
    assert submitted_jobs(sweep) == {job}


def test_200_tiny_jobs_through_the_cluster_each_finish_exactly_once(tmp_path):
    """The launcher's own submission and bookkeeping at 200 jobs: one job array built from the
    `slurm` preset's parameters, followed by the launcher's wait loop (result files, SLURM states)
    until every task has returned. Each task is a trivial function, not a training run (200 torch
    start-ups would take ~20 min on 2 cores), so this exercises SLURM and the launcher, not regbench's
    training or Hydra's per-job config composition."""
    r = python("-c", f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'tests' / 'cluster')!r})
from omegaconf import OmegaConf
from hydra_plugins.regbench_launcher.slurm_launcher import EXTRA_KEYS, make_executor, wait_for_jobs, is_lost
import cloudpickle, tiny_task
cloudpickle.register_pickle_by_value(tiny_task)  # the job needs no tests/ on its path
params = OmegaConf.to_container(OmegaConf.load({str(ROOT / 'conf/hydra/launcher/slurm.yaml')!r}))
for k in ("defaults", "partition", *EXTRA_KEYS):  # the launcher's own keys are not submitit's
    params.pop(k, None)
params.update(submitit_folder={str(tmp_path / '.submitit/%j')!r}, name="tiny", mem_gb=1, array_parallelism=16,
              additional_parameters={{"oversubscribe": True}})  # 4 tiny tasks per CPU (OverSubscribe=YES)
jobs = make_executor(params).map_array(tiny_task.append_line, [{str(tmp_path / 'tasks.jsonl')!r}] * 200, range(200))
out = wait_for_jobs(jobs, poll_s=0.5, state_poll_s=2, result_grace_s=5)
print(json.dumps({{"job": jobs[0].job_id.split("_")[0], "results": [None if is_lost(o) else o for o in out]}}))
""", timeout=420)
    assert r.returncode == 0, r.stderr[-3000:]
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["results"] == list(range(200))  # every job's own result, in order, none lost
    lines = [json.loads(x) for x in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert sorted(x["task"] for x in lines) == list(range(200))  # each task ran exactly once ...
    assert {x["array_job"] for x in lines} == {answer["job"]}  # ... as a task of the one array
    assert sorted(int(x["array_task"]) for x in lines) == list(range(200))
    # SLURM's account, once the last tasks have ended: every attempt it made, one per task
    assert final_states(answer["job"], 200) == ["COMPLETED"] * 200
    assert sorted(s["id"] for s in sacct(answer["job"], attempts=True)) == sorted(f"{answer['job']}_{k}" for k in range(200))


def test_without_accounting_a_dead_job_is_found_with_squeue_and_scontrol_and_the_wait_ends(tmp_path):
    """sacct failing as it does on a cluster without accounting (a stand-in `sacct` first on PATH, for
    the launcher's process only): the launcher follows the jobs with squeue and scontrol, and a
    cancelled job counts as lost, with its state, instead of being waited for forever."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(0o755)
    r = python("-c", f"""
import json, subprocess, sys, time
sys.path.insert(0, {str(ROOT / 'tests' / 'cluster')!r})
from hydra_plugins.regbench_launcher.slurm_launcher import make_executor, wait_for_jobs, is_lost, SlurmStates
import cloudpickle, tiny_task
cloudpickle.register_pickle_by_value(tiny_task)
params = dict(submitit_folder={str(tmp_path / '.submitit/%j')!r}, timeout_min=5, cpus_per_task=1, mem_gb=1)
jobs = make_executor(params).map_array(tiny_task.append_line, [{str(tmp_path / 'tasks.jsonl')!r}] * 2, [0, 1], [0, 300])
while "RUNNING" not in subprocess.run(["squeue", "-h", "-j", jobs[1].job_id, "-o", "%T"], capture_output=True, text=True).stdout:
    time.sleep(0.2)
subprocess.run(["scancel", jobs[1].job_id], check=True)
states = SlurmStates()
out = wait_for_jobs(jobs, poll_s=0.5, state_poll_s=1, result_grace_s=2, states=states)
print(json.dumps({{"accounting": states.accounting, "out": [str(o) if is_lost(o) else o for o in out],
                  "lost": [is_lost(o) for o in out]}}))
""", env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["accounting"] is False and "no SLURM accounting?" in r.stderr
    assert answer["lost"] == [False, True] and answer["out"][0] == 0
    assert "ended CANCELLED without a result" in answer["out"][1]
