"""The composition root: the one place that reads the whole config and builds everything from it.

`run(cfg)` validates the config, skips a run that already finished, builds data, model,
regularization, LightningModule, callbacks and Trainer, trains, tests, and writes the run's
`results.json`. Everything below receives plain arguments, never the config.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import regbench

from regbench.config import ConfigError, RunConfig, validate
from regbench.naming import config_hash, group_hash, run_id
from regbench.health import mark_health
from regbench.records import DONE, RESULTS_FILE, empty_record, read_record, worst as _worst, write_record
from regbench.rundir import (CHECKPOINT_DIR, RunLock, attempt_dir, clean_partial, drop_attempt, load_checkpoint,
                             resumable_checkpoint, swap_in_attempt)

log = logging.getLogger("regbench")


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


class Outcome(str):
    """What a run returns to Hydra: its status (ok, diverged, failed, skipped, busy, rejected) as a
    string -- what the sweep's status line counts (sweep.py) -- and, as its float value, the objective
    a sweeper optimizes (`protocol.metric`, a validation metric; NaN when the run has none, which
    Optuna records as a failed trial): `float(outcome)`. So `hydra/sweeper=optuna` gets its floats
    and the status is still recorded."""

    objective: float

    def __new__(cls, status: str, objective: float = float("nan")) -> "Outcome":
        self = super().__new__(cls, status)
        self.objective = float(objective)
        return self

    def __float__(self) -> float:
        return self.objective

    def __reduce__(self):  # joblib / submitit pickle the return value
        return (Outcome, (str(self), self.objective))


def run(cfg: DictConfig) -> Outcome:
    """Hydra task: one run (or one arm's tuning study with protocol=tuned). Returns an Outcome: the
    status as a string, the objective `protocol.metric` as its float value."""
    status = _run(cfg)
    if isinstance(status, Outcome):
        return status
    return Outcome(status, _objective(cfg))


def _objective(cfg: DictConfig) -> float:
    """Mean `protocol.metric` over the ok records this run wrote or found (one, or the replica group)."""
    try:
        metric = cfg.protocol.metric
        replicas = int(cfg.replicas)
        seeds = [int(cfg.seed) + k for k in range(replicas)]
        base = _run_dir().parent
        cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in seeds] if replicas > 1 else [cfg]
        values = []
        for c in cfgs:
            r = read_record(base / run_id(c) / RESULTS_FILE)
            if r["status"] == "ok":
                values.append(float(r["metrics"][metric]))
        return sum(values) / len(values) if len(values) == len(cfgs) else float("nan")
    except Exception:  # noqa: BLE001 - no record (rejected, busy, failed): no objective
        return float("nan")


def _run(cfg: DictConfig) -> str | Outcome:
    """The run (`_run_task`); a full disk is named as such (not as whatever error it caused), and no
    partial record is left."""
    try:
        return _run_task(cfg)
    except Exception as e:
        full = _no_space(e, _run_dir())
        if full is None:
            raise
        message = f"no space left on device: {full} (no record written for {_run_dir().name})"
        log.error(message)
        if not _is_multirun():
            print(f"regbench: {message}", file=sys.stderr)
            sys.exit(1)
        return "failed"


def _no_space(error: BaseException, run_dir: Path) -> str | None:
    """The path a full disk refused, when `error` or an error behind it is ENOSPC, or when the run
    folder's disk is full (some libraries turn ENOSPC into other errors); else None."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return str(e.filename or run_dir)
        e = e.__cause__ or e.__context__
    try:
        return str(run_dir) if shutil.disk_usage(run_dir).free < 1 << 16 else None
    except OSError:
        return None


def _run_task(cfg: DictConfig) -> str | Outcome:
    from regbench.watchdog import exit_with_parent

    exit_with_parent()  # a joblib worker must not outlive the sweep's process (and keep its locks)
    run_dir = _run_dir()
    try:
        rc = validate(cfg)
    except ConfigError as e:
        return _reject(e, run_dir)

    if rc.protocol.name == "tuned" and rc.protocol.role is None:
        return run_tuned(cfg, run_dir)

    if rc.replicas > 1:
        return run_replicas(cfg, rc, run_dir)
    done = run_dir / RESULTS_FILE
    if done.exists() and not rc.force:
        try:
            if read_record(done)["status"] in DONE:
                log.info("skipping %s: results.json says ok (force=true reruns it)", run_dir.name)
                return "skipped"
        except ValueError as e:
            log.warning("%s; rerunning", e)
    try:  # before the lock and any file: a run its data refuse leaves nothing behind
        data = load_checked_data(rc, [k for k in cfg.data if k != "name"])
    except _rejected() as e:
        return _reject(e, run_dir)
    lock = RunLock(run_dir)
    try:
        acquired = lock.acquire()
    except OSError:  # e.g. a full disk: leave no lock file or empty folder behind
        lock.release()
        _remove_if_empty(run_dir)
        raise
    if not acquired:
        log.info("skipping %s: another process is running it (%s)", run_dir.name, lock.owner())
        return "busy"
    try:
        if not rc.force and _is_done(run_dir):  # finished by another process since the check above
            log.info("skipping %s: results.json says ok (force=true reruns it)", run_dir.name)
            return "skipped"
        return _run_locked(cfg, rc, run_dir, data)
    except SystemExit as e:
        _exit_on_sigterm(e)
        raise
    finally:
        lock.release()
        _remove_if_empty(run_dir)  # a rejected run leaves no folder behind


def run_tuned(cfg: DictConfig, study_dir: Path) -> Outcome:
    """protocol=tuned: this job is one arm's study (regbench/tuning/study.py); returns the status of
    its runs and the best trial's score."""
    from regbench.tuning.space import parse_space
    from regbench.tuning.study import run_study

    try:
        parse_space(cfg)
    except ConfigError as e:
        return Outcome(_reject(e, study_dir))
    try:
        status, best = run_study(cfg, study_dir, train_trials)
    except SystemExit as e:
        _exit_on_sigterm(e)
        raise
    except _rejected() as e:
        return Outcome(_reject(e, study_dir))
    except Exception as e:
        log.exception("tuning study %s failed", study_dir.name)
        if not _is_multirun():
            raise
        return Outcome("failed")
    return Outcome(status, best)


def _exit_on_sigterm(e: SystemExit) -> None:
    """Lightning turns SIGTERM into SIGTERMException, a SystemExit without a code (exit status 0):
    a terminated run or sweep must not look successful."""
    if type(e).__name__ == "SIGTERMException":
        log.error("terminated by SIGTERM: no record written for the unfinished run")
        raise SystemExit(128 + 15) from e




def _is_done(run_dir: Path) -> bool:
    try:
        return read_record(run_dir / RESULTS_FILE)["status"] in DONE
    except ValueError:
        return False


def _base_record(cfg: DictConfig, rc: RunConfig, run_dir: Path) -> dict[str, Any]:
    record = empty_record()
    record.update(run_id=run_dir.name, seed=rc.seed, data=rc.data.name, model=rc.model.name,
                  regularizer=rc.regularizer.name, group_hash=group_hash(cfg),
                  config=OmegaConf.to_container(cfg, resolve=True))
    return record


def run_replicas(cfg: DictConfig, rc: RunConfig, run_dir: Path) -> str:
    """`replicas=S`: seeds seed..seed+S-1 trained as one population, one ordinary record per seed,
    each in the folder named from its own config (seed s, replicas S). The group is always the full
    seed list (its dropout masks depend on it); records already ok are kept, never rewritten."""
    seeds = [rc.seed + k for k in range(rc.replicas)]
    cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in seeds]
    dirs = [run_dir.parent / run_id(c) for c in cfgs]
    rcs = [replace(rc, seed=s) for s in seeds]  # validated as a group (seed a multiple of replicas) above
    return _worst(run_group(cfgs, dirs, label=run_dir.name, keep_whole=True, rcs=rcs))


def population_refusal(rc: RunConfig) -> str | None:
    """Why the population engine does not train this config (a trainer setting it does not
    implement), or None. Such runs train separately, with a log line."""
    if rc.trainer.checkpoint_every:
        return "trainer.checkpoint_every > 0 (populations write no resumable checkpoints)"
    if rc.trainer.devices not in (1, "1", None, "auto"):
        return f"trainer.devices={rc.trainer.devices} (a population runs on one device)"
    if getattr(rc.data, "split_per_seed", None):
        return "data.split_per_seed gives each seed its own validation split (a population shares one)"
    return None


def run_group(cfgs: list[DictConfig], dirs: list[Path], label: str, keep_whole: bool = False,
              rcs: list[RunConfig] | None = None) -> list[str]:
    """Train `cfgs` (task configs that differ only in engine.stackable.STACKABLE_KEYS), writing each
    one's ordinary record into its folder `dirs[i]`: as one population when the engine can, else
    separately (with a log line naming why). Records already ok are skipped (force=true reruns
    them); with `keep_whole` (replicas=S: its masks depend on the whole group) the population is
    always the whole group, and only the records not yet ok are written. Returns each config's
    status (ok, diverged, collapsed, failed, skipped, busy, rejected), in order."""
    status = ["skipped"] * len(cfgs)
    if rcs is None:
        rcs = []
        for c, d in zip(cfgs, dirs):
            try:
                rcs.append(validate(c))
            except ConfigError as e:
                return [_reject(e, d)] * len(cfgs)
    todo = [i for i, d in enumerate(dirs) if rcs[i].force or not _is_done(d)]
    if not todo:
        log.info("skipping %s..%s: all %d records say ok (force=true reruns them)", dirs[0].name, dirs[-1].name,
                 len(dirs))
        return status
    members = list(range(len(cfgs))) if keep_whole else todo
    from regbench.engine.memory import PopulationMemoryError

    locked = list(members)
    locks = [RunLock(dirs[i]) for i in locked]
    for i in locked:
        dirs[i].mkdir(parents=True, exist_ok=True)
    handlers = []
    try:
        held = [i for i, lock in zip(locked, locks) if not lock.acquire()]
        if held and keep_whole:
            log.info("skipping the population of %s: another process holds one of its runs", label)
            return [("busy" if i in todo else s) for i, s in enumerate(status)]
        if held:  # a sweep's group: the runs another process holds are its to write; the others train
            log.info("%s: %d of its runs are held by another process: training the other %d", label, len(held),
                     len(todo) - len(held))
            for i in held:
                status[i] = "busy"
        todo = [i for i in todo if i not in held and (rcs[i].force or not _is_done(dirs[i]))]  # done meanwhile
        if not keep_whole:
            members = todo
        if not todo:
            return status
        why = next((w for w in (population_refusal(rcs[i]) for i in members) if w), None)
        if why is None and len(members) == 1 and not keep_whole:
            why = "one run"
        if why is not None:
            if why != "one run":
                log.info("%s: training separately: %s", label, why)
            for lock, i in zip(locks, locked):
                if i not in todo:  # not written here: a kill during the others leaves no stale lock in it
                    lock.release()
            for i in todo:
                status[i] = _run_locked(cfgs[i], rcs[i], dirs[i])
                locks[locked.index(i)].release()  # as a separate run: done, unlocked
            return status
        for i in members:
            handler = logging.FileHandler(dirs[i] / "run.log")
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
            logging.getLogger().addHandler(handler)
            handlers.append(handler)
        try:
            results = train_population([cfgs[i] for i in members], [rcs[i] for i in members],
                                       [dirs[i] for i in members], label=label)
        except (*_rejected(), PopulationMemoryError) as e:
            rejected = _reject(e, dirs[0])
            return [(rejected if i in todo else s) for i, s in enumerate(status)]
        except Exception as e:  # the population failed: every run it was to write gets a failed record
            for i in todo:
                (dirs[i] / "traceback.txt").write_text(traceback.format_exc())
                record = _base_record(cfgs[i], rcs[i], dirs[i])
                record.update(status="failed", error=f"{type(e).__name__}: {e}")
                write_record(dirs[i], record)
            log.error("population %s failed: %s: %s", label, type(e).__name__, e)
            if not _is_multirun():
                raise
            return [("failed" if i in todo else s) for i, s in enumerate(status)]
        by_member = dict(zip(members, results))
        for i in todo:
            record = _base_record(cfgs[i], rcs[i], dirs[i])
            record.update(by_member[i])
            write_record(dirs[i], mark_health(record))
        log.info("%s: %d replicas in one population: test/acc %s", label, len(members),
                 " ".join(f"{by_member[i]['metrics']['test/acc']:.3f}" for i in todo))
        for i in todo:
            status[i] = by_member[i]["status"]
        return status
    except SystemExit as e:
        _exit_on_sigterm(e)
        raise
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
        for lock, i in zip(locks, locked):
            lock.release()
            _remove_if_empty(dirs[i])


def train_population(cfgs: list[DictConfig], rcs: list[RunConfig], dirs: list[Path], label: str
                     ) -> list[dict[str, Any]]:
    """`train_members` for configs that differ only in stackable keys: one population per group of
    members that build the same architecture (input dropout on against off trains apart). Returns
    each config's record fields, in order."""
    from regbench.engine.population import structure

    data_keys = [k for k in cfgs[0].data if k != "name"]
    model_keys = [k for k in cfgs[0].model if k != "name"]
    data = load_checked_data(rcs[0], data_keys)
    import torch

    kinds: dict[tuple, list[int]] = {}
    for i, rc in enumerate(rcs):
        with torch.device("meta"):  # the architecture only: no weights allocated or initialised
            kinds.setdefault(structure(network_of(rc, data, regularization_of(rc), model_keys)), []).append(i)
    if len(kinds) > 1:
        log.info("%s: %d populations (members whose layers differ, e.g. input dropout on or off, train apart)",
                 label, len(kinds))
    out: dict[int, dict[str, Any]] = {}
    for rows in kinds.values():
        results = train_members([rcs[i] for i in rows], [dirs[i] for i in rows], data_keys, model_keys, data=data,
                                hparams=[_hparams(cfgs[i]) for i in rows], label=label)
        out.update(zip(rows, results))
    return [out[i] for i in range(len(cfgs))]


def _ok_record(run_dir: Path) -> dict | None:
    """The run's record when it is finished for good (ok, or collapsed: the same seed collapses again)."""
    try:
        r = read_record(run_dir / RESULTS_FILE)
    except ValueError:
        return None
    return r if r["status"] in DONE else None


def train_trials(cfgs: list[DictConfig], seeds: list[int], out_dir: Path, group_hashes: list[str | None],
                 stack: bool, label: str) -> list[list[dict]]:
    """protocol=tuned's trainer (tuning/study.run_study receives it): train each of `cfgs` (a study's
    trials, or its chosen config) on `seeds`, writing one record per (config, seed) into
    `out_dir/<run id>/`, with `group_hashes[i]` as config i's pooling key; return, per config, its
    records in seed order. Records already ok are read, not retrained. With `stack`, the runs left to
    train form one population per group of configs that differ only in stackable keys (a trial's
    seeds, and trials asked together); the others train separately."""
    from regbench.engine.stackable import group_key

    runs = [(c, g, OmegaConf.merge(c, {"seed": s}), s) for c, g in zip(cfgs, group_hashes) for s in seeds]
    dirs = [out_dir / run_id(r[2]) for r in runs]
    records: list[dict | None] = [_ok_record(d) for d in dirs]
    first = {}  # two trials that drew the same values are one run (one folder): trained once, read by both
    for i, d in enumerate(dirs):
        first.setdefault(d, i)
    todo = [i for i, r in enumerate(records) if r is None and first[dirs[i]] == i]
    rcs = {i: replace(validate(runs[i][0]), seed=runs[i][3]) for i in todo}
    results: dict[int, dict] = {}
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(group_key(runs[i][2]), []).append(i)
    for members in groups.values():
        why = population_refusal(rcs[members[0]]) if stack and len(members) > 1 else "not stacked"
        if why is not None:
            if why != "not stacked":
                log.info("%s: training the seeds separately: %s", label, why)
            continue
        for i in members:
            dirs[i].mkdir(parents=True, exist_ok=True)
            clean_partial(dirs[i])
        out = train_population([runs[i][2] for i in members], [rcs[i] for i in members], [dirs[i] for i in members],
                               label=label)
        results.update(zip(members, out))
    for i in todo:
        cfg, group, cfg_i, seed = runs[i]
        d, rc_i = dirs[i], rcs[i]
        d.mkdir(parents=True, exist_ok=True)
        record = _base_record(cfg_i, rc_i, d)
        if i not in results:
            clean_partial(d)
            try:
                results[i] = train(rc_i, d, data_keys=[k for k in cfg.data if k != "name"],
                                   model_keys=[k for k in cfg.model if k != "name"], hparams=_hparams(cfg_i))
            except _rejected():
                raise
            except Exception as e:  # a failed run is recorded, never lost
                (d / "traceback.txt").write_text(traceback.format_exc())
                results[i] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                log.error("%s: %s failed: %s", label, d.name, results[i]["error"])
        record.update(results[i])
        if group is not None:
            record["group_hash"] = group
        record = mark_health(record)
        write_record(d, record)
        records[i] = record
    records = [records[first[d]] for d in dirs]
    n = len(seeds)
    return [records[k * n:(k + 1) * n] for k in range(len(cfgs))]  # type: ignore[misc]


def checkpoint_owner(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """What a run's checkpoints are stamped with, and must carry to be resumed from."""
    return {"run_id": run_dir.name, "config_hash": config_hash(cfg)}


def load_checked_data(rc: RunConfig, data_keys: list[str]):
    """The run's data, loaded before any folder or record is written, and the checks that need them:
    sizes against the dataset (val_size, train_size in `make_splits`; batch_size here), and a data.root
    that cannot be read or written. Raises ConfigError naming the key, the value and what is allowed."""
    import inspect

    from regbench.data import DATASETS, DatasetFileError, build_data

    kwargs = split_kwargs({k: getattr(rc.data, k) for k in data_keys}, rc.seed)
    accepted = inspect.signature(DATASETS[rc.data.name]).parameters
    for k, v in kwargs.items():  # a key another dataset has (say +data.val_generator_seed), added to this one
        if k not in accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            raise ConfigError(f"data.{k}={v!r} is not an option of data={rc.data.name}: allowed "
                              f"{', '.join(sorted(accepted))}")
    try:
        data = build_data(rc.data.name, **kwargs)
    except DatasetFileError as e:
        raise ConfigError(f"data.root={rc.data.root!r}: {e}") from e
    except OSError as e:  # a file where the folder should be, no permission, a full disk
        raise ConfigError(f"data.root={rc.data.root!r} cannot hold the {rc.data.name} cache: {e}: "
                          f"allowed a folder regbench can read and write") from e
    n = len(data.y_train)
    if rc.optim.batch_size > n:
        raise ConfigError(f"optim.batch_size={rc.optim.batch_size} is out of range for {rc.data.name}: "
                          f"allowed [1, {n}] (its training examples)")
    return data


def _run_locked(cfg: DictConfig, rc: RunConfig, run_dir: Path, data=None) -> str:
    owner = checkpoint_owner(cfg, run_dir)
    # force=true over a finished run: the new attempt is written aside (curves, log, checkpoints) and
    # swapped in once its record is written, so a killed rerun leaves the finished run whole
    work = attempt_dir(run_dir) if rc.force and _is_done(run_dir) else run_dir
    resume = resumable_checkpoint(run_dir, owner) if rc.trainer.checkpoint_every and work == run_dir else None
    if resume is None:
        clean_partial(work)
    handler = logging.FileHandler(work / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    REJECTED = _rejected()
    record = _base_record(cfg, rc, run_dir)
    try:
        record.update(train(rc, work, data_keys=[k for k in cfg.data if k != "name"],
                            model_keys=[k for k in cfg.model if k != "name"], resume=resume,
                            checkpoint_owner=owner, data=data, hparams=_hparams(cfg)))
    except REJECTED as e:  # bad input found while building (arm/model/data mismatch): nothing is recorded
        clean_partial(work)
        (work / "run.log").unlink(missing_ok=True)
        drop_attempt(run_dir)
        return _reject(e, run_dir)
    except Exception as e:  # a failed run is recorded, never lost
        (work / "traceback.txt").write_text(traceback.format_exc())
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        write_record(run_dir, record)
        swap_in_attempt(work, run_dir)
        log.error("run %s failed: %s (traceback in %s)", run_dir.name, record["error"], run_dir / "traceback.txt")
        if not _is_multirun():
            raise
        return "failed"
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    write_record(run_dir, mark_health(record))
    swap_in_attempt(work, run_dir)  # after the record: until then the folder holds the finished run whole
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # the record is complete: resuming is moot
    log.info("%s: %s test/acc %.4f (%d epochs, %.1f s)", run_dir.name, record["status"],
             record["metrics"]["test/acc"], record["epochs_trained"], record["train_seconds"])
    return record["status"]


def _reject(error: Exception, run_dir: Path) -> str:
    """Bad input, before any training: a single run prints it and exits with status 2; in a sweep it
    is logged and counted (the sweep then exits 1) while the other runs go on. No folder is left."""
    _remove_if_empty(run_dir)
    if not _is_multirun():
        print(f"regbench: invalid config: {error}", file=sys.stderr)
        sys.exit(2)
    log.error("rejected %s: %s", run_dir.name, error)
    return "rejected"


def _rejected() -> tuple[type[Exception], ...]:
    from regbench.models import SlotError
    from regbench.models.inputs import IncompatibleInputError

    return ConfigError, SlotError, IncompatibleInputError


def _remove_if_empty(path: Path) -> None:
    """Hydra creates the run folder (and its parent) before the task starts; a rejected config
    leaves nothing behind. Only empty folders are removed, so no result can ever be lost here."""
    for p in (path, path.parent):
        try:
            p.rmdir()
        except OSError:
            return


def _checkpoint_epoch(path: Path) -> int:
    """The (0-based) epoch at whose end the resumable checkpoint `path` was saved."""
    return int(load_checkpoint(path)["epoch"])


def pick_device(accelerator: str) -> str:
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("gpu", "cuda"):
        raise ConfigError(f"trainer.accelerator={accelerator!r} but no CUDA device is available: use auto or cpu")
    if accelerator == "mps":
        return "mps"
    return "cpu"


def train(rc: RunConfig, run_dir: Path, data_keys: list[str], model_keys: list[str],
          resume: Path | None = None, checkpoint_owner: dict[str, str] | None = None,
          data=None, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run: a population of one (`train_members`). Returns the record's measured fields.

    `resume`: a checkpoint already checked to belong to this run (`rundir.resumable_checkpoint`);
    it is loaded with `weights_only=True`. `checkpoint_owner` stamps the checkpoints this run saves.
    `data`: the DataSplits already loaded and checked by `load_checked_data` (else loaded here).
    Only the keys a data / model YAML sets are passed to its builder.
    """
    return train_members([rc], [run_dir], data_keys, model_keys, data=data, hparams=[hparams or {}],
                         resume=resume, checkpoint_owner=checkpoint_owner, label=run_dir.name)[0]


def train_members(rcs: list[RunConfig], dirs: list[Path], data_keys: list[str], model_keys: list[str], *,
                  data=None, hparams: list[dict[str, Any]], resume: Path | None = None,
                  checkpoint_owner: dict[str, str] | None = None, label: str) -> list[dict[str, Any]]:
    """The one training path, for S >= 1 members (configs that differ only in stackable keys and build
    the same architecture): build each as its separate run would be built (its seed, network,
    regularization, logger), train them as one population (engine/fit.py) driven by Lightning
    (engine/module.py: epochs, progress, checkpoints, precision), then finish each member: final
    evaluation, mechanism measurements, best.ckpt, final hparams. Returns each member's record fields."""
    import pytorch_lightning as pl
    import torch

    from regbench.analysis.mechanism import measure, predict_probs
    from regbench.data import build_data
    from regbench.engine import memory
    from regbench.engine.fit import Replica, Training
    from regbench.engine.module import EpochData, PopulationModule
    from regbench.training.callbacks import EpochBar, EpochProgress, PeriodicCheckpoint, want_bar
    from regbench.training.loggers import build_logger, log_final
    from regbench.training.quiet import silence_known_noise

    t0 = time.perf_counter()
    import_seconds = regbench.startup_seconds()
    rc0 = rcs[0]
    if rc0.trainer.threads:
        torch.set_num_threads(rc0.trainer.threads)
    # subnormal floats flushed to zero (x86 FTZ/DAZ, where the CPU has it): without it a weight-decay
    # population on mnist5k ran 14x slower (382.6 s against 27.4 s for 170 epochs of 3 replicas, the
    # same val/acc), its arithmetic stalled on values below 1.2e-38 that change no reported number
    torch.set_flush_denormal(True)
    device = pick_device(rc0.trainer.accelerator)
    if data is None:
        data = build_data(rc0.data.name, **split_kwargs({k: getattr(rc0.data, k) for k in data_keys}, rc0.seed))
    data = data.to(device)
    nets, members = [], []
    for rc, d in zip(rcs, dirs):
        reg = regularization_of(rc)
        pl.seed_everything(rc.seed, workers=False, verbose=False)
        nets.append(network_of(rc, data, reg, model_keys).to(device))
        # a resumed run logs again from the epoch after its checkpoint: purge_step makes TensorBoard drop
        # what the interrupted process wrote from there on, so each epoch appears once in the curves
        logger = build_logger(rc.logger.name, d, experiment=rc.name, tracking_uri=rc.logger.tracking_uri,
                              purge_step=_checkpoint_epoch(resume) + 1 if resume is not None else None)
        members.append(Replica(seed=rc.seed, reg=reg, lr=rc.optim.lr, momentum=rc.optim.momentum, label=d.name,
                               logger=logger))
    chunk = rc0.trainer.eval_batch_size
    if len(rcs) > 1:
        memory.check(len(rcs), nets[0], data, batch_size=rc0.optim.batch_size, optim_name=rc0.optim.name,
                     eval_chunk=chunk)
    training = Training(nets, members, data, optim_name=rc0.optim.name, batch_size=rc0.optim.batch_size,
                        max_epochs=rc0.trainer.max_epochs, eval_batch_size=chunk,
                        clip=rc0.trainer.gradient_clip_val, label=label)
    module = PopulationModule(training)
    bar = want_bar(rc0.trainer.progress_bar)
    callbacks = [EpochProgress(0 if bar else rc0.trainer.progress_every, label)]
    if bar:
        callbacks.append(EpochBar(label))
    if rc0.trainer.checkpoint_every:  # last: it saves the state the epoch left
        callbacks.append(PeriodicCheckpoint(dirs[0] / CHECKPOINT_DIR / "last.ckpt", rc0.trainer.checkpoint_every,
                                            owner=checkpoint_owner, loggers=[m.logger for m in members]))
    silence_known_noise()
    trainer = pl.Trainer(
        max_epochs=rc0.trainer.max_epochs, accelerator="gpu" if device == "cuda" else device,
        devices=rc0.trainer.devices, precision=rc0.trainer.precision, deterministic=rc0.trainer.deterministic,
        callbacks=callbacks, logger=False, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=bar, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(dirs[0]), plugins=slurm_plugins(),
    )
    setup_seconds = time.perf_counter() - t0
    log.info("%s: start-up %.2f s (imports and config %.2f s, data and model %.2f s)", label,
             import_seconds + setup_seconds, import_seconds, setup_seconds)
    if resume is not None:
        log.info("%s: resuming from %s", label, resume)
    # weights_only=True: Lightning's own resume load must not unpickle arbitrary objects either
    trainer.fit(module, train_dataloaders=EpochData(), ckpt_path=str(resume) if resume else None, weights_only=True)
    records, scored, end = training.finish()
    out = []
    for i, (record, member) in enumerate(zip(records, members)):
        net, reg = scored.module(end, i), member.reg
        record["extra"].update(import_seconds=import_seconds, setup_seconds=setup_seconds / len(rcs),
                               resumed=resume is not None)
        mc = predict_probs(net, data.x_test, chunk, mc_samples=reg.mc_samples) if reg.mc_samples else None
        record["extra"]["mechanism"] = measure(net, data.x_test, data.y_test, chunk=chunk, probs=mc)
        save_weights(dirs[i], net, run_id=dirs[i].name, restored_best=record["restored_best"],
                     best_epoch=record["best_epoch"], epochs_trained=record["epochs_trained"],
                     metrics=record["metrics"])
        log_final(member.logger, hparams[i], record["metrics"], step=max(record["epochs_trained"] - 1, 0))
        out.append(record)
    return out


def regularization_of(rc: RunConfig):
    """The run's regularization (layers' slots, objective, stopping criterion, ...) from its validated config."""
    from regbench.regularizers import build_regularization

    r = rc.regularizer
    return build_regularization(r.name, dropout=r.dropout, early_stop=r.early_stop, weight_decay=r.weight_decay,
                                maxnorm=r.maxnorm, rdrop_alpha=r.rdrop_alpha, mc_samples=r.mc_samples,
                                max_epochs=rc.trainer.max_epochs)


def network_of(rc: RunConfig, data, reg, model_keys: list[str]):
    """The run's network for `data` (its input shape and classes), with `reg`'s slots filled."""
    from regbench.models import build_model

    model_kwargs = {k: getattr(rc.model, k) for k in model_keys}
    return build_model(rc.model.name, data.input_shape, data.num_classes, reg.slots, regularizer=rc.regularizer.name,
                       data_name=rc.data.name, **model_kwargs)


def slurm_plugins() -> list[Any]:
    """Inside a SLURM job, Lightning's SLURM environment without its auto-requeue. The launcher's
    submitit already requeues a preempted job (on its signal, USR2) and reruns the Hydra job, which
    resumes from trainer.checkpoint_every's checkpoint; Lightning's auto-requeue (on SIGUSR1: an
    hpc_ckpt file and `scontrol requeue`) would be a second mechanism racing the first."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def split_kwargs(data_kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """The data builder's keyword arguments: `split_per_seed` turns into split_seed + seed."""
    if data_kwargs.pop("split_per_seed", None):
        data_kwargs["split_seed"] = data_kwargs["split_seed"] + seed
    return data_kwargs


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    """What every logger records as the run's hyperparameters: the resolved config, flattened."""
    from regbench.training.loggers import flat_hparams

    return flat_hparams(OmegaConf.to_container(cfg, resolve=True))


WEIGHTS_FILE = "best.ckpt"


def save_weights(run_dir: Path, net, **meta: Any) -> Path:
    """`<run>/best.ckpt`: the weights the record's metrics were measured on (the best validation
    epoch's when an early-stopping arm restored them, else the last epoch's), as a plain state_dict
    of tensors beside plain metadata, so `torch.load(path, weights_only=True)` reads it safely.
    Written atomically, before results.json."""
    import torch

    plain = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
    plain["metrics"] = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    path, tmp = run_dir / WEIGHTS_FILE, run_dir / (WEIGHTS_FILE + ".tmp")
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": plain}, tmp)
    os.replace(tmp, path)
    return path
