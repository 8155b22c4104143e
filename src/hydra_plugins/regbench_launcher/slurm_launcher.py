"""regbench's SLURM launcher: hydra-submitit's `submitit_slurm`, plus what a long sweep needs.

`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) selects it. Over hydra-submitit's launcher it:

- **filters finished jobs before submission**: a job whose records all say ok (same run id) is not
  submitted; it is reported to the sweep's callbacks as `skipped`, as if it had run and skipped itself;
- **counts a job that died without a result**: where hydra-submitit raises `UncompletedJobError` on
  that job's `results()` (and no report is written), this launcher asks SLURM for the job's final
  state (CANCELLED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, ...), writes a `failed` record for each of the
  job's runs with that state, reports the job as failed, and waits for the others: the sweep then
  writes its report, its summary names the run, and it exits 1;
- **bounds its wait without accounting**: submitit learns that a job died only from `sacct`, and
  waits forever where accounting is off. Here, when `sacct` fails, jobs are followed with `squeue`
  (alive while listed) and `scontrol show job` (the final state, which slurmctld keeps for
  MinJobAge, default 300 s); a job that is no longer queued or running and has left no result within
  `result_grace_s` counts as lost (state UNKNOWN once slurmctld has forgotten it).

Requeueing stays submitit's: a preempted or requeued job runs the same Hydra job again and regbench
resumes it from its last checkpoint (`trainer.checkpoint_every`); Lightning's own SLURM auto-requeue
is switched off in the job (regbench.app, `SLURMEnvironment(auto_requeue=False)`), so exactly one
mechanism requeues.

**Stacking** (`max_population` > 1; default 1, one SLURM job per run): the jobs left to run are
grouped as the stacking launcher groups them (stacking_launcher.plan_units: same
`engine.stackable.group_key`, at most `max_population` each; invalid, tuned and replicas>1 jobs
alone), and each group goes out as one SLURM job (one task of the array) that trains it as one
population (`stacking_launcher.run_unit`), writing one record per job and reporting each job to
the sweep's callbacks. A group's job that dies without a result is handled per run as above.

Extra keys (beside every `submitit_slurm` key): `result_grace_s`, `poll_s` (how often result files
are looked for), `state_poll_s` (how often SLURM is asked for the states of unfinished jobs),
`max_population`.
"""


import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger("regbench")

# SLURM job states in which a job may still produce its result (squeue/sacct names)
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED",
})
EXTRA_KEYS = ("result_grace_s", "poll_s", "state_poll_s", "max_population")


@dataclass
class RegbenchSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.regbench_launcher.slurm_launcher.RegbenchSlurmLauncher"
    # a job that has left the queue gets this long for its result file to appear (a shared
    # filesystem may show it late) before it counts as lost
    result_grace_s: float = 30.0
    poll_s: float = 1.0          # result files are looked for this often
    state_poll_s: float = 10.0   # SLURM (sacct, else squeue/scontrol) is asked this often
    max_population: int = 1      # >1: compatible jobs go out as one SLURM job each, trained as one population


ConfigStore.instance().store(group="hydra/launcher", name="regbench_slurm", node=RegbenchSlurmConf,
                             provider="regbench")


def _run(cmd: list[str]) -> "subprocess.CompletedProcess | None":
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("%s: %s", cmd[0], e)
        return None


def _base_state(state: str) -> str:
    return state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED


class SlurmStates:
    """The states of a sweep's jobs, from sacct while it answers, else from squeue and scontrol."""

    def __init__(self) -> None:
        self.accounting: bool | None = None  # unknown until sacct was tried

    def __call__(self, job_ids: Sequence[str]) -> dict[str, str]:
        """{job id: state} for the ids SLURM knows; an id missing from the answer is not known yet."""
        if self.accounting is not False:
            states = self._sacct(job_ids)
            if states is not None:
                self.accounting = True
                return states
            if self.accounting is None:
                log.warning("sacct does not answer (no SLURM accounting?): following the jobs with squeue "
                            "and scontrol; a job that leaves the queue without a result counts as failed "
                            "after result_grace_s. Configure accounting (slurmdbd) for reliable job states")
            self.accounting = False
        return self._queue(job_ids)

    @staticmethod
    def _sacct(job_ids: Sequence[str]) -> dict[str, str] | None:
        from submitit.slurm.slurm import SlurmInfoWatcher

        cmd = ["sacct", "-X", "-o", "JobID,State", "--parsable2"]
        for main_id in sorted({j.split("_")[0] for j in job_ids}):
            cmd += ["-j", main_id]
        r = _run(cmd)
        if r is None or r.returncode != 0:
            return None
        info = SlurmInfoWatcher().read_info(r.stdout)
        return {j: _base_state(info[j]["State"]) for j in job_ids if j in info}

    @staticmethod
    def _queue(job_ids: Sequence[str]) -> dict[str, str]:
        """squeue lists live jobs (-r: one line per array task); a job it does not list has ended:
        scontrol still knows its final state for MinJobAge seconds, then it is UNKNOWN."""
        mains = sorted({j.split("_")[0] for j in job_ids})
        r = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(mains)])
        if r is None or r.returncode != 0:  # slurmctld not answering: nothing is known, nothing is lost
            return {}
        live = dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)
        states = {}
        for j in job_ids:
            if j in live:
                states[j] = _base_state(live[j])
                continue
            s = _run(["scontrol", "show", "job", "-o", j])
            m = re.search(r"\bJobState=(\S+)", s.stdout) if s is not None and s.returncode == 0 else None
            states[j] = m.group(1) if m else "UNKNOWN"
        return states


class RegbenchSlurmLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in EXTRA_KEYS if k in params}
        super().__init__(**params)
        self.result_grace_s = float(own.get("result_grace_s", 30.0))
        self.poll_s = float(own.get("poll_s", 1.0))
        self.state_poll_s = float(own.get("state_poll_s", 10.0))
        self.max_population = int(own.get("max_population", 1))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from regbench import jobs

        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        configs = [loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        returns: list[JobReturn | None] = [None] * len(configs)
        todo = []
        for i, cfg in enumerate(configs):
            if jobs.finished(cfg):
                returns[i] = self._report(cfg, "skipped")
            else:
                todo.append(i)
        if len(todo) < len(configs):
            log.info("%d of %d jobs already finished (their results.json say ok): not submitted",
                     len(configs) - len(todo), len(configs))
        if todo and self.max_population > 1:
            from .stacking_launcher import plan_units, stack_key

            units = [[todo[k] for k in u] for u in
                     plan_units([stack_key(jobs.task_config(configs[i])) for i in todo], self.max_population)]
            submitted = self._submit_units([[(initial_job_idx + i, list(job_overrides[i])) for i in u] for u in units])
            for unit, outcome in zip(units, self._wait(submitted)):
                for k, i in enumerate(unit):
                    returns[i] = self._lost(configs[i], outcome) if is_lost(outcome) else outcome[k]
        elif todo:
            submitted = self._submit([job_overrides[i] for i in todo], [initial_job_idx + i for i in todo])
            for i, outcome in zip(todo, self._wait(submitted)):
                returns[i] = self._lost(configs[i], outcome) if is_lost(outcome) else outcome
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]

    def _lost(self, cfg: DictConfig, outcome: str) -> JobReturn:
        """A job whose SLURM job ended without a result: each of its runs without an ok record gets a
        failed one naming the state, and the job is reported failed (ok if its records say so)."""
        from regbench import jobs

        name = jobs.job_dir(cfg).name
        if not jobs.wait_released(cfg):  # a cancelled job trains on until SLURM's SIGKILL
            log.warning("%s: its runs are still held %.0f s after the job ended", name, jobs.RELEASE_WAIT_S)
        if all(jobs.is_ok(d) for d in jobs.run_dirs(cfg)):  # died after writing its records
            log.warning("%s: %s, but its records say ok: counted ok", name, outcome)
            return self._report(cfg, "ok")
        lost = jobs.record_lost(cfg, outcome)
        log.error("%s: %s; recorded as failed: %s", name, outcome,
                  ", ".join(lost) or "nothing (its runs are held by a live process)")
        return self._report(cfg, "failed")

    def _report(self, cfg: DictConfig, status: str) -> JobReturn:
        """A job that did not run (skipped before submission) or did not return (lost), reported to
        the sweep's callbacks as its own job would have: a completed job whose task returned `status`."""
        from regbench import jobs

        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(jobs.job_dir(cfg))
        ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=jobs.task_config(cfg),
                        hydra_cfg=OmegaConf.masked_copy(cfg, "hydra"), working_dir=os.getcwd(),
                        task_name=str(cfg.hydra.job.name), status=JobStatus.COMPLETED)
        ret.return_value = status
        self.hydra_context.callbacks.on_job_end(config=cfg, job_return=ret)  # type: ignore[union-attr]
        return ret

    def _submit(self, job_overrides: Sequence[Sequence[str]], job_nums: Sequence[int]) -> list[Any]:
        """hydra-submitit's submission (one job array), for the jobs left to run."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for num, overrides in zip(job_nums, job_overrides):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        submitted = make_executor(self.params, self._EXECUTOR).map_array(self, *zip(*job_params))
        log.info("submitted %d jobs to SLURM (job %s) from %s", len(submitted),
                 submitted[0].job_id.split("_")[0], sweep_dir)
        return submitted

    def _submit_units(self, units: Sequence[Sequence[tuple[int, list[str]]]]) -> list[Any]:
        """One SLURM job (array task) per unit: a group trained as one population, or a single job."""
        assert self.config is not None
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        for unit in units:
            for num, overrides in unit:
                log.info("\t#%d : %s%s", num, " ".join(filter_overrides(overrides)),
                         f"  [population of #{unit[0][0]}]" if len(unit) > 1 else "")
        state = Singleton.get_state()
        submitted = make_executor(self.params, self._EXECUTOR).map_array(UnitJob(self), list(units),
                                                                          [state] * len(units))
        log.info("submitted %d jobs to SLURM (job %s) for %d runs", len(submitted),
                 submitted[0].job_id.split("_")[0], sum(len(u) for u in units))
        return submitted

    def _wait(self, submitted: list[Any]) -> list[Any]:
        return wait_for_jobs(submitted, poll_s=self.poll_s, state_poll_s=self.state_poll_s,
                             result_grace_s=self.result_grace_s)


class UnitJob:
    """What one SLURM job of a stacking sweep runs: its unit's Hydra jobs (stacking_launcher.run_unit),
    returning their JobReturns. Requeued by submitit as a whole (`checkpoint`): a requeued population
    skips the records it already wrote and trains the others again."""

    def __init__(self, launcher: "RegbenchSlurmLauncher") -> None:
        self.launcher = launcher

    def __call__(self, unit: Sequence[tuple[int, list[str]]], singleton_state: dict[Any, Any]) -> list[JobReturn]:
        from .stacking_launcher import run_unit

        l = self.launcher
        return run_unit(unit, l.hydra_context, l.config, l.task_function, singleton_state)  # type: ignore[arg-type]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_executor(params: dict[str, Any], cluster: str = "slurm") -> Any:
    """A submitit executor with a hydra-submitit launcher's parameters, as hydra-submitit builds it."""
    import submitit

    params = dict(params)
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(cluster=cluster, folder=params.pop("submitit_folder"), **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()})
    return executor


def wait_for_jobs(submitted: Sequence[Any], poll_s: float = 1.0, state_poll_s: float = 10.0,
                  result_grace_s: float = 30.0, states: Any = None) -> list[Any]:
    """Each submitit job's result (for a Hydra job, its JobReturn), or, for a job that has none, a
    sentence naming the job and its SLURM state. Result files are looked for every poll_s; SLURM is
    asked every state_poll_s; a job in a final state without a result file for result_grace_s is lost."""
    states = states or SlurmStates()
    outcomes: dict[int, Any] = {}
    pending = dict(enumerate(submitted))
    ended_at: dict[int, float] = {}
    last_ask = float("-inf")
    while pending:
        for k, job in list(pending.items()):
            if job.paths.result_pickle.exists():
                outcomes[k] = _result(job, states)
                del pending[k]
        if not pending:
            break
        now = time.monotonic()
        if now - last_ask >= state_poll_s:
            last_ask = now
            known = states([j.job_id for j in pending.values()])
            for k, job in list(pending.items()):
                state = known.get(job.job_id)
                if state is None or state in ACTIVE_STATES:
                    ended_at.pop(k, None)  # (again) queued or running: a requeued job starts over
                    continue
                ended_at.setdefault(k, now)
                if now - ended_at[k] >= result_grace_s and not job.paths.result_pickle.exists():
                    outcomes[k] = Lost(f"SLURM job {job.job_id} ended {state} without a result "
                                       f"(log: {job.paths.stderr})")
                    del pending[k]
        time.sleep(poll_s)
    return [outcomes[k] for k in range(len(submitted))]


class Lost(str):
    """Why a job has no result."""

    lost = True


def is_lost(outcome: Any) -> bool:
    """Whether wait_for_jobs found no result for a job (by attribute, not class: Hydra's plugin scan
    may execute this module again, making a second `Lost` class)."""
    return getattr(outcome, "lost", False) is True


def _result(job: Any, states: Any) -> Any:
    """The job's result; a job whose result is submitit's own error (a time-out not requeued, a task
    that could not start) is lost, with that error and SLURM's state."""
    try:
        return job.results()[0]
    except Exception as e:  # noqa: BLE001 - submitit's own failure (timed out, not requeued, ...)
        state = states([job.job_id]).get(job.job_id, "UNKNOWN")
        lines = [line.strip() for line in str(e).splitlines()]
        cause = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)),
                     lines[0] if lines else "")
        return Lost(f"SLURM job {job.job_id} ended {state} without a result ({type(e).__name__}: {cause}; "
                    f"log: {job.paths.stderr})")
