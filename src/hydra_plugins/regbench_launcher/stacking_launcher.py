"""regbench's stacking launcher: a sweep's compatible jobs train as one population each.

`hydra/launcher=regbench` (conf/hydra/launcher/regbench.yaml; the multirun default) selects it;
`hydra.launcher.n_jobs=N` runs its units in N joblib worker processes, taking hydra-joblib-launcher's
other keys too. (Hydra's own `hydra/launcher=joblib` and `submitit_local` still run one job per
run: a YAML cannot shadow their names, Hydra validates it against their schema.) Given the
sweeper's batch of jobs, it:

1. composes each job's config (as every launcher does) and sorts the jobs into *units*, keeping
   sweep order: jobs whose task configs have the same `engine.stackable.group_key` (they differ
   only in seed, lr, momentum, dropout rates, weight decay, max-norm, early-stopping thresholds)
   form one group, cut into chunks of at most `max_population` jobs. A job is a unit of its own
   when its config is invalid (app.run rejects it with its message, and the sweep exits 1), when it
   is protocol=tuned without a role (the job is one arm's whole tuning study), when it sets
   `replicas > 1` (it is already a population), or when no other job matches it;
2. with `n_jobs > 1` and fewer units than workers, splits the largest groups in halves until every
   worker has a unit (four seeds on two workers: two populations of two), then runs the units in
   joblib's loky worker processes, as hydra-joblib-launcher runs jobs; else one after another here;
3. runs a single job exactly as Hydra's basic launcher does (`run_job` with the task function, so
   app.run); runs a group through `regbench.app.run_group` inside the Hydra job of its first job
   (its HydraConfig, logging and callbacks), which trains them as one population where it can and
   writes each job's ordinary record into the folder Hydra names for that job;
4. returns one JobReturn per job, in order, each made by Hydra's `run_job` for that job (its own
   HydraConfig, `on_job_start` / `on_job_end` callbacks, so the sweep's status counts and progress
   lines see every job): its return value is what app.run returns, an `Outcome` with the job's own
   status and, as float, its record's `protocol.metric` (what hydra/sweeper=optuna optimizes).

A population that raises marks every job of its group failed (run_group has written each a failed
record). `hydra/launcher=basic` turns stacking off: one job, one process, one run.
"""


import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger("regbench")

JOBLIB_KEYS = ("backend", "prefer", "require", "verbose", "timeout", "pre_dispatch", "batch_size", "temp_folder",
               "max_nbytes", "mmap_mode")


@dataclass
class StackingLauncherConf:
    _target_: str = "hydra_plugins.regbench_launcher.stacking_launcher.StackingLauncher"
    max_population: int = 64   # at most this many jobs in one population (the engine may split it further)
    n_jobs: int = 1            # worker processes (joblib/loky); 1: every unit in the sweep's own process; -1: all cores
    # hydra-joblib-launcher's keys, passed to joblib.Parallel when n_jobs != 1 (backend is always loky)
    backend: Optional[str] = None
    prefer: str = "processes"
    require: Optional[str] = None
    verbose: int = 0
    timeout: Optional[float] = None
    pre_dispatch: str = "2*n_jobs"
    batch_size: str = "auto"
    temp_folder: Optional[str] = None
    max_nbytes: Optional[str] = None
    mmap_mode: str = "r"


ConfigStore.instance().store(group="hydra/launcher", name="regbench_stacking", node=StackingLauncherConf,
                             provider="regbench")


def stack_key(task_cfg: DictConfig) -> str | None:
    """The key jobs share when they may train as one population, or None for a job that runs on
    its own: an invalid config (app.run rejects it, naming the key), protocol=tuned without a role
    (one arm's tuning study), replicas > 1 (already a population)."""
    from regbench.config import ConfigError, validate
    from regbench.engine.stackable import group_key

    try:
        rc = validate(task_cfg)
        if rc.protocol.name == "tuned" and rc.protocol.role is None or rc.replicas > 1:
            return None
        return group_key(task_cfg)
    except ConfigError:
        return None
    except Exception as e:  # noqa: BLE001 - e.g. an interpolation that does not resolve: app.run says why
        log.debug("job not stacked: %s", e)
        return None


def plan_units(keys: Sequence[str | None], max_population: int, workers: int = 1) -> list[list[int]]:
    """The jobs' indices in units, in sweep order: jobs with equal non-None keys together, in chunks
    of at most `max_population`; a None key is a unit of its own. With `workers` > 1 the largest
    units are halved until there are `workers` units (or none has two jobs left)."""
    if max_population < 1:
        raise ValueError(f"hydra.launcher.max_population={max_population} is out of range: allowed >= 1")
    groups: dict[str, list[int]] = {}
    units: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            units.append([i])
            continue
        if key not in groups or len(groups[key]) >= max_population:
            groups[key] = []
            units.append(groups[key])  # the unit's place is its first job's
        groups[key].append(i)
    while len(units) < workers:
        k = max(range(len(units)), key=lambda j: len(units[j]), default=None)
        if k is None or len(units[k]) < 2:
            break
        half = (len(units[k]) + 1) // 2
        units[k:k + 1] = [units[k][:half], units[k][half:]]
    return units


def run_unit(jobs: Sequence[tuple[int, Sequence[str]]], hydra_context: HydraContext, config: DictConfig,
             task_function: TaskFunction, singleton_state: dict[Any, Any] | None = None) -> list[JobReturn]:
    """Run one unit (a single job, or a group of stackable jobs) and return each job's JobReturn.
    Runs in the sweep's process or in a joblib worker (then `singleton_state` is Hydra's state)."""
    setup_globals()
    if singleton_state is not None:
        Singleton.set_state(singleton_state)
        from regbench.watchdog import exit_with_parent

        exit_with_parent()  # a worker must not outlive the sweep's process (and keep its run locks)
    cfgs = [_sweep_config(hydra_context, config, idx, overrides) for idx, overrides in jobs]
    if len(cfgs) == 1:
        return [_run(hydra_context, cfgs[0], task_function)]
    return _run_group(hydra_context, cfgs)


def _sweep_config(hydra_context: HydraContext, config: DictConfig, idx: int, overrides: Sequence[str]) -> DictConfig:
    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
    return cfg


def _run(hydra_context: HydraContext, cfg: DictConfig, task: Callable[[DictConfig], Any]) -> JobReturn:
    return run_job(hydra_context=hydra_context, task_function=task, config=cfg, job_dir_key="hydra.sweep.dir",
                   job_subdir_key="hydra.sweep.subdir")


def _run_group(hydra_context: HydraContext, cfgs: list[DictConfig]) -> list[JobReturn]:
    """The group's population, trained inside the Hydra job of its first job; then every job's own
    Hydra job, whose task returns that job's outcome (or raises the population's error)."""
    from regbench import jobs
    from regbench.app import Outcome, run_group
    from regbench.records import DONE

    dirs = [Path(jobs.job_dir(c)).absolute() for c in cfgs]
    label = f"{dirs[0].name} (+{len(dirs) - 1} stacked)"
    statuses: list[str] = []

    def train(task_cfg: DictConfig) -> Any:
        log.info("%s: %d jobs as one population (jobs #%s)", label, len(cfgs),
                 ", #".join(str(c.hydra.job.num) for c in cfgs))
        # a sweep may name one config twice (seed=0,0; an Optuna batch that samples a choice twice):
        # it is trained once, and its repeats count as skipped, as they would one after another
        first_of = {d: k for k, d in reversed(list(enumerate(dirs)))}
        unique = sorted(set(first_of.values()))
        trained = dict(zip(unique, run_group([jobs.task_config(cfgs[k]) for k in unique], [dirs[k] for k in unique],
                                             label=label)))
        for k, d in enumerate(dirs):
            s = trained[first_of[d]]
            statuses.append(s if k in trained or s not in (*DONE, "skipped") else "skipped")
        return Outcome(statuses[0], objective(task_cfg, dirs[0], statuses[0]))

    first = _run(hydra_context, cfgs[0], train)
    returns = [first]
    for cfg, d, status in zip(cfgs[1:], dirs[1:], statuses[1:] or [None] * (len(cfgs) - 1)):
        def outcome(task_cfg: DictConfig, d=d, status=status) -> Any:
            if status is None:  # the population raised before any status: each job fails with its error
                raise first.return_value if isinstance(first.return_value, BaseException) else RuntimeError(
                    f"the population of {label} returned no status")
            return Outcome(status, objective(task_cfg, d, status))

        returns.append(_run(hydra_context, cfg, outcome))
        _remove_if_empty(d)  # run_job made the folder; a rejected or busy job leaves none behind
    return returns


def objective(task_cfg: DictConfig, run_dir: Path, status: str) -> float:
    """The job's `protocol.metric` from its record (what a sweeper optimizes); NaN without an ok one."""
    from regbench.records import DONE
    from regbench.records import RESULTS_FILE, read_record

    if status not in (*DONE, "skipped"):
        return float("nan")
    try:
        record = read_record(run_dir / RESULTS_FILE)
        return float(record["metrics"][str(task_cfg.protocol.metric)]) if record["status"] == "ok" else float("nan")
    except Exception:  # noqa: BLE001 - no record, no such metric: no objective
        return float("nan")


def _remove_if_empty(path: Path) -> None:
    for p in (path, path.parent):
        try:
            p.rmdir()
        except OSError:
            return


class StackingLauncher(Launcher):
    def __init__(self, max_population: int = 64, n_jobs: int = 1, **joblib_keys: Any) -> None:
        self.max_population = int(max_population)
        self.n_jobs = int(n_jobs)
        self.joblib = {k: v for k, v in joblib_keys.items() if k in JOBLIB_KEYS}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def workers(self) -> int:
        if self.n_jobs < 0:
            import os

            return max(1, (os.cpu_count() or 1) + 1 + self.n_jobs)  # joblib: -1 all cores, -2 all but one
        return max(1, self.n_jobs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from regbench import jobs

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        loader = self.hydra_context.config_loader
        keys = [stack_key(jobs.task_config(loader.load_sweep_config(self.config, list(o)))) for o in job_overrides]
        workers = self.workers()
        try:
            units = plan_units(keys, self.max_population, workers)
        except ValueError as e:  # bad launcher key: refused before any job runs
            print(f"regbench: invalid config: {e}", file=sys.stderr)
            sys.exit(2)
        stacked = sum(len(u) for u in units if len(u) > 1)
        log.info("launching %d jobs as %d units (%d jobs stacked in %d populations)%s", len(job_overrides),
                 len(units), stacked, sum(len(u) > 1 for u in units),
                 f" on {min(workers, len(units))} workers" if workers > 1 else "")
        for u in units:
            for i in u:
                log.info("\t#%d : %s%s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])),
                         f"  [population of #{initial_job_idx + u[0]}]" if len(u) > 1 else "")
        args = [[(initial_job_idx + i, job_overrides[i]) for i in u] for u in units]
        if workers > 1 and len(units) > 1:
            from joblib import Parallel, delayed

            params = {**self.joblib, "n_jobs": min(workers, len(units)), "backend": "loky"}
            for k in ("pre_dispatch", "batch_size", "max_nbytes"):  # as hydra-joblib-launcher: "2" -> 2
                try:
                    params[k] = int(params[k]) if params.get(k) else params.get(k)
                except ValueError:
                    pass
            params = {k: v for k, v in params.items() if v is not None or k in ("timeout",)}
            state = Singleton.get_state()
            results = Parallel(**params)(delayed(run_unit)(a, self.hydra_context, self.config, self.task_function,
                                                           state) for a in args)
        else:
            results = [run_unit(a, self.hydra_context, self.config, self.task_function) for a in args]
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        for u, rets in zip(units, results):
            for i, r in zip(u, rets):
                returns[i] = r
        assert all(isinstance(r, JobReturn) for r in returns)
        return returns  # type: ignore[return-value]

