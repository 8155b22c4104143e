"""A sweep job seen from the launcher, before it is submitted and after it died.

A job of a regbench sweep writes the records of its run folders: one folder, or S of them with
`replicas=S` (seeds seed..seed+S-1, each in the folder named from its own config, as
`app.run_replicas` writes them). The cluster launcher asks two things:

    finished(cfg)             every record of the job says ok (or collapsed) under the same run id: skip the job
                              before submission (no job is started only to skip itself)
    record_lost(cfg, reason)  the job ended without a result (cancelled, out of memory, time limit,
                              node failure): each of its runs that has no ok record gets a `failed`
                              record naming the reason, so the tables count it and a rerun redoes it

`cfg` is a job's composed sweep config (with its `hydra` node), as the launcher loads it. Light
imports only: the launcher's process never imports torch.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from regbench.records import DONE
from regbench.naming import group_hash, run_id
from regbench.records import RESULTS_FILE, empty_record, read_record, write_record
from regbench.rundir import LOCK_FILE, RunLock

log = logging.getLogger("regbench")

# SLURM ends a cancelled job with SIGTERM, which submitit's job process bypasses (on a cluster it is
# also the signal of preemption), and sends SIGKILL only KillWait seconds later (30 s by default, 10 s
# in scripts/slurm-local.sh): a job whose state already says CANCELLED can still be training, and
# can even finish, meanwhile. The launcher waits this long for its run folders to be released.
RELEASE_WAIT_S = 120.0


def task_config(cfg: DictConfig) -> DictConfig:
    """The job's config without the `hydra` node: what the task function receives."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def job_dir(cfg: DictConfig) -> Path:
    """The folder Hydra gives the job (hydra.sweep.dir / hydra.sweep.subdir)."""
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def run_dirs(cfg: DictConfig) -> list[Path]:
    """The run folders the job writes records into."""
    first = job_dir(cfg)
    replicas = int(OmegaConf.select(cfg, "replicas", default=1) or 1)
    if replicas <= 1:
        return [first]
    task = task_config(cfg)
    seed = int(task.seed)
    return [first.parent / run_id(OmegaConf.merge(task, {"seed": seed + k})) for k in range(replicas)]


def is_ok(run_dir: Path) -> bool:
    """results.json says the run is done (ok, or collapsed: a rerun skips both, as app.run does),
    and it is this folder's record (same run id)."""
    try:
        record = read_record(run_dir / RESULTS_FILE)
    except ValueError:
        return False
    return record["status"] in DONE and record.get("run_id") == run_dir.name


def finished(cfg: DictConfig) -> bool:
    """Nothing left to do for this job: force is off and every record of it says ok."""
    if OmegaConf.select(cfg, "force", default=False):
        return False
    try:
        dirs = run_dirs(cfg)
    except Exception as e:  # noqa: BLE001 - a config the job itself will reject: submit it, it says why
        log.debug("cannot name the run folders of a job (%s): submitting it", e)
        return False
    return all(is_ok(d) for d in dirs)


def wait_released(cfg: DictConfig, timeout: float = RELEASE_WAIT_S, poll: float = 0.5) -> bool:
    """Wait until no live process holds a run folder of the job (its lock is free); False if one
    still does after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for d in run_dirs(cfg):
        while (d / LOCK_FILE).exists():
            lock = RunLock(d)
            if lock.acquire():
                lock.release()
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
    return True


def record_lost(cfg: DictConfig, reason: str) -> list[str]:
    """Write a failed record, with `reason`, for each run of the job that has no ok record and that
    no live process holds (its lock is free). Returns the names of the runs recorded as failed."""
    task = task_config(cfg)
    dirs = run_dirs(cfg)
    written = []
    for k, d in enumerate(dirs):
        if is_ok(d):
            continue
        d.mkdir(parents=True, exist_ok=True)
        lock = RunLock(d)
        if not lock.acquire():
            log.warning("%s: not recording it as failed: a live process holds it (%s)", d.name, lock.owner())
            continue
        try:
            run_cfg = OmegaConf.merge(task, {"seed": int(task.seed) + k}) if len(dirs) > 1 else task
            record = empty_record()
            record.update(run_id=d.name, seed=int(run_cfg.seed), data=str(run_cfg.data.name),
                          model=str(run_cfg.model.name), regularizer=str(run_cfg.regularizer.name),
                          group_hash=group_hash(run_cfg), config=OmegaConf.to_container(run_cfg, resolve=True),
                          status="failed", error=reason)
            write_record(d, record)
            written.append(d.name)
        finally:
            lock.release()
    return written
