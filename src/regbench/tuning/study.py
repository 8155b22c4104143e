"""One arm of the tuned protocol: an Optuna study on validation, then the chosen config on fresh seeds.

    run_study(cfg, study_dir) -> Outcome

The study lives in `<study_dir>/study.db` (SQLite, Optuna's RDB storage; study name = the folder's
name), so it is a real, resumable database of trials. Each trial:

  1. asks the sampler for one value per tuned key (the protocol's shared keys and the arm's own);
  2. trains the config with those values on the k tuning seeds, stacked in one model when the engine
     can (one population, engine/fit.py), else one separate run per seed; each seed writes an ordinary record
     into `<study_dir>/tune/<run id>/` whose config says `protocol.role: tune` and the trial number;
  3. scores the trial with the mean of `protocol.metric` (a validation metric: the test split is never
     read for a choice) over the k seeds. A trial in which a seed collapsed, diverged or failed gets no score
     (Optuna state FAIL) and still counts against the budget N.

Trials whose values cannot depend on each other's scores are asked together and trained as one
population of (trial, seed) replicas (`protocol.stack_trials` of them at most, `stack` on): every trial
of a random search or a grid, TPE's random start-up trials (its first `n_startup_trials`, 10, less the
trials already complete), and values queued again after a kill. They get the very values one trial at a
time would (the samplers draw in the same order, and nothing is told in between that they would read);
TPE's informed trials then follow one at a time, as before.

When N trials have ended, the best-scoring trial's config (ties: the earlier trial) is trained on the
M final seeds into `<study_dir>/final/`, with `protocol.role: final`.

Resuming: the study folder is claimed with a lock (a second process skips the arm); a trial left
RUNNING by a killed process is marked FAIL with user attribute `interrupted` (not counted against N)
and its values are queued again, so the next trial reruns it; every run whose record already says ok
is read, not retrained (records are found by run id), so a resumed study repeats no finished trial.
"""

from __future__ import annotations

import logging
import random
import warnings
from itertools import product
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf, open_dict

from regbench.config import ConfigError, validate
from regbench.naming import result_config, run_id, short_hash
from regbench.records import worst
from regbench.rundir import RunLock
from regbench.tuning import space as S

log = logging.getLogger("regbench")
DB_FILE = "study.db"
# (cfgs, seeds, out_dir, group_hashes, stack, label) -> per config, one record per seed, in seed order
TrainTrials = Callable[[list, list, Path, list, bool, str], list]


def direction(metric: str) -> str:
    return "minimize" if metric.endswith("loss") else "maximize"


def trial_group_hash(cfg: DictConfig) -> str:
    """A trial's seeds pool with each other only: the hash of its whole config minus the seed."""
    d = result_config(cfg)
    d.pop("seed", None)
    return short_hash(d)


def _sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random; grid: its points are queued in order


def _marked(cfg: DictConfig, values: dict, role: str, trial: int, study: str) -> DictConfig:
    out = S.apply(cfg, values)
    with open_dict(out):
        out.protocol.role, out.protocol.trial, out.protocol.study = role, trial, study
    return out


def counted(trial) -> bool:
    """A trial that used up budget: finished, or failed by itself (not interrupted by a kill)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL
                                                  and not trial.user_attrs.get("interrupted"))


def independent_trials(study, sampler: str) -> int:
    """How many trials may be asked before any of them is told, their values the same as one trial at
    a time would get: all for random search and a grid (its points are queued up front); for TPE its
    random start-up trials not yet complete (TPE reads only complete trials, and draws at random until
    it has n_startup_trials of them), at least 1."""
    from optuna.trial import TrialState

    if sampler != "tpe":
        return 1 << 30
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return max(1, study.sampler._n_startup_trials - complete)


def run_study(cfg: DictConfig, study_dir: Path, train_trials: TrainTrials) -> tuple[str, float]:
    """Tune one arm, then train its chosen config on the final seeds. Returns (status, best score).

    `train_trials(cfgs, seeds, out_dir, group_hashes, stack, label) -> records`: the composition root's
    trainer of configs on several seeds (`app.train_trials`), one list of records (one per seed) per config."""
    import optuna
    from optuna.trial import TrialState

    rc = validate(cfg)
    params = S.parse_space(cfg)
    p = rc.protocol
    name = study_dir.name
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(study_dir)
    if not lock.acquire():
        log.info("skipping %s: another process is tuning it (%s)", name, lock.owner())
        return "busy", float("nan")
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{(study_dir / DB_FILE).resolve()}"
        study = optuna.load_study(study_name=name, storage=storage) if (study_dir / DB_FILE).exists() else None
        n_before = len(study.trials) if study else 0
        study = optuna.create_study(study_name=name, storage=storage, direction=direction(p.metric),
                                    sampler=_sampler(p.sampler, p.sampler_seed + n_before), load_if_exists=True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed process
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state(t._trial_id, TrialState.FAIL)
            if t.params:  # (a process killed between ask and suggest left none)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.enqueue_trial(t.params)
            log.info("%s: trial %d was interrupted: its values are queued again", name, t.number)
        if p.sampler == "grid" and n_before == 0:
            points = [dict(zip(g := S.grid(params, p.trials), combo)) for combo in product(*g.values())]
            random.Random(p.sampler_seed).shuffle(points)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                for values in points[:p.trials]:
                    study.enqueue_trial(values)
        tune_seeds = list(range(p.tune_seed_start, p.tune_seed_start + p.tune_seeds))
        most = (p.stack_trials or 1) if p.stack else 1
        statuses = []
        while (done := sum(counted(t) for t in study.get_trials(deepcopy=False))) < p.trials:
            batch = []
            for _ in range(min(p.trials - done, most, independent_trials(study, p.sampler))):
                trial = study.ask()
                values = S.suggest(trial, params)
                cfg_t = _marked(cfg, values, "tune", trial.number, name)
                try:
                    validate(cfg_t)
                except ConfigError as e:  # a sampled value the arm refuses (e.g. a cross-field rule)
                    log.warning("%s trial %d: %s", name, trial.number, e)
                    trial.set_user_attr("error", str(e))
                    study.tell(trial, state=TrialState.FAIL)
                    statuses.append("failed")
                    continue
                batch.append((trial, values, cfg_t))
            if not batch:
                continue
            numbers = [t.number for t, _, _ in batch]
            label = f"{name} trial {numbers[0]}" + (f"-{numbers[-1]}" if len(batch) > 1 else "")
            recs_of = train_trials([c for _, _, c in batch], tune_seeds, study_dir / "tune",
                                   [trial_group_hash(c) for _, _, c in batch], p.stack, label)
            if len(batch) > 1 and all(r["status"] == "failed" for recs in recs_of for r in recs):
                # the population failed as a whole (say, memory): no trial's own doing, so each is trained
                # again on its own and only its own failure counts against the budget
                log.warning("%s: the population of trials %s failed: training them one at a time", name, label)
                recs_of = [train_trials([c], tune_seeds, study_dir / "tune", [trial_group_hash(c)], p.stack,
                                        f"{name} trial {t.number}")[0] for t, _, c in batch]
            for (trial, values, _), recs in zip(batch, recs_of):
                statuses += [r["status"] for r in recs]
                _tell(study, trial, values, recs, p.metric, name)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and counted(t)]
        if not complete:
            log.error("%s: no trial of %d finished with every seed ok: no final runs", name, p.trials)
            return "failed", float("nan")
        sign = -1 if direction(p.metric) == "minimize" else 1
        best = max(complete, key=lambda t: (sign * t.value, -t.number))
        cfg_f = _marked(cfg, best.params, "final", best.number, name)
        final_seeds = list(range(p.final_seed_start, p.final_seed_start + p.final_seeds))
        recs = train_trials([cfg_f], final_seeds, study_dir / "final", [S.final_group_hash(cfg, params)], p.stack,
                            f"{name} final")[0]
        statuses += [r["status"] for r in recs]
        ok = [r["metrics"]["test/acc"] for r in recs if r["status"] == "ok"]
        log.info("%s: chose trial %d (%s %.4f over %d seeds): %s; %d final seeds, mean test/acc %.4f", name,
                 best.number, p.metric, best.value, p.tune_seeds, best.params, len(recs),
                 sum(ok) / len(ok) if ok else float("nan"))
        return worst(statuses or ["ok"]), float(best.value)
    finally:
        lock.release()


def _tell(study, trial, values: dict, recs: list[dict], metric: str, name: str) -> None:
    """The trial's score: the mean of `metric` over its seeds when every seed is ok, else FAIL (counted)."""
    from optuna.trial import TrialState

    trial.set_user_attr("run_ids", [r["run_id"] for r in recs])
    ok = [r for r in recs if r["status"] == "ok"]
    if len(ok) == len(recs):
        score = sum(r["metrics"][metric] for r in ok) / len(ok)
        study.tell(trial, score)
        log.info("%s trial %d: %s -> %s %.4f", name, trial.number,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
                 metric, score)
    else:
        trial.set_user_attr("error", f"{len(recs) - len(ok)} of {len(recs)} seeds not ok")
        study.tell(trial, state=TrialState.FAIL)
        log.warning("%s trial %d: %d of %d seeds not ok: no score (counted against the budget)",
                    name, trial.number, len(recs) - len(ok), len(recs))
