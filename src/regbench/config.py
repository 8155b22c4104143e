"""The config schema: types, allowed ranges and choices of every key, checked before training.

The YAML files under `conf/` hold every value; these dataclasses hold none of them (fields are
MISSING, or a neutral None / 0 for an absent regularizer component). `validate(cfg)` merges the
composed config into the schema, which refuses unknown keys and wrong types, then checks each
field's range or choices, declared once here in the field's metadata. Errors name the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of its allowed range."""


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):  # inf too: every printed range excludes it
            return False
        above = v >= self.lo if self.lo_closed else v > self.lo
        below = v <= self.hi if self.hi_closed else v < self.hi
        return above and below

    def __str__(self) -> str:
        hi = "inf" if self.hi == math.inf else _num(self.hi)
        closing = "]" if self.hi_closed and self.hi != math.inf else ")"
        return f"{'[' if self.lo_closed else '('}{_num(self.lo)}, {hi}{closing}"


def _num(v: float) -> str:
    """4294967295 as such (a seed bound), 3.4e38 in short form."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


INF = math.inf
FLOAT32_MAX = 3.4028234663852886e38     # a larger learning rate or penalty is inf in the float32 update
SEED_MAX = 2**32 - 1                    # Lightning's seed_everything (and numpy) take seeds in [0, 2**32 - 1]
PROB = Interval(0, 1, True, False)          # a drop probability: p = 1 would drop everything
POS_INT = Interval(1, INF)
NONNEG = Interval(0, INF)
POS = Interval(0, INF, False)


def rng(interval: Interval, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"range": interval})


def one_of(*choices: str, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"choices": choices})


# ---------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING                       # cache / download folder
    val_size: int = rng(POS_INT)
    split_seed: int = rng(NONNEG)             # fixed: every arm and seed sees the same split
    # +data.split_per_seed=true: the validation split (and train_size subsample) is drawn with
    # split_seed + seed, so the tables' spread includes the split's variance (absent = off; not in the
    # YAMLs so that the run ids of runs made before the key existed stay the same)
    split_per_seed: Optional[bool] = None
    train_size: Optional[int] = rng(POS_INT, None)
    generator_seed: Optional[int] = rng(NONNEG, None)   # mnist1d only
    # mnist1d only, +data.val_generator_seed=S: the validation split comes from the dataset generated with
    # seed S, and all 4000 training sequences train (absent = carved from them; absent from the YAMLs so
    # that the run ids of earlier runs stay the same)
    val_generator_seed: Optional[int] = rng(NONNEG, None)
    # mnist1d only, +data.train_generator_seed=S (+data.train_pool=N): the training sequences are the N
    # (default 4000; a multiple of 8) training sequences of a dataset generated with seed S: sets beyond 4000
    train_generator_seed: Optional[int] = rng(NONNEG, None)
    train_pool: Optional[int] = rng(Interval(8, 400_000), None)
    test_size: Optional[int] = rng(POS_INT, None)       # datasets without an official test split
    test_seed: Optional[int] = rng(NONNEG, None)        # ... which is carved with this fixed seed
    checksums: Optional[dict[str, Optional[str]]] = None   # file -> md5, overrides the official ones
    resize: Optional[list[int]] = None        # [H, W] for image datasets
    download: Optional[bool] = None          # mnist, fashion_mnist, cifar10: fetch when absent


# --------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    # caps far above any model of the benchmark, so that a typo (hidden=1000000000) is refused up front
    # rather than by the allocator mid-run
    hidden: Optional[int] = rng(Interval(1, 65536), None)
    depth: Optional[int] = rng(Interval(1, 1000), None)
    channels: Optional[int] = rng(Interval(1, 65536), None)


# --------------------------------------------------------------------------------- regularizer
DROPOUT_KINDS = ("bernoulli", "gaussian", "alpha", "dropconnect", "spatial", "dropblock", "drop_path")
ELEMENTWISE_KINDS = ("bernoulli", "gaussian", "alpha")   # the kinds that act per unit (so conv_p means something)
SCHEDULES = ("constant", "curriculum", "early")
CRITERIA = ("patience", "gl", "pq", "up")
MONITORS = ("val/loss", "val/acc")


@dataclass
class DropoutConfig:
    kind: str = one_of(*DROPOUT_KINDS)
    p: float = rng(PROB)                      # hidden-unit drop probability
    input_p: float = rng(PROB, 0.0)           # input drop probability (0 = none)
    conv_p: Optional[float] = rng(PROB, None)  # element-wise rate on conv feature maps (None = p)
    block_size: Optional[int] = rng(POS_INT, None)       # dropblock
    schedule: str = one_of(*SCHEDULES, default="constant")
    schedule_gamma: Optional[float] = rng(POS, None)      # curriculum: p(t) = p (1 - exp(-gamma t))
    schedule_until: Optional[float] = rng(Interval(0, 1, False, True), None)  # early: fraction of epochs


@dataclass
class EarlyStopConfig:
    criterion: str = one_of(*CRITERIA)
    monitor: str = one_of(*MONITORS)
    patience: Optional[int] = rng(POS_INT, None)          # criterion=patience
    min_delta: float = rng(NONNEG, 0.0)
    alpha: Optional[float] = rng(POS, None)               # criteria gl, pq
    strip: Optional[int] = rng(POS_INT, None)             # k, criteria pq, up
    strips: Optional[int] = rng(POS_INT, None)            # s, criterion up
    restore_best: bool = True


@dataclass
class RegularizerConfig:
    name: str = MISSING
    dropout: Optional[DropoutConfig] = None
    early_stop: Optional[EarlyStopConfig] = None
    weight_decay: float = rng(Interval(0, FLOAT32_MAX), 0.0)   # L2 penalty on weights (not biases)
    maxnorm: Optional[float] = rng(POS, None)             # c: ||w_unit||_2 <= c
    rdrop_alpha: Optional[float] = rng(POS, None)         # R-Drop consistency weight
    mc_samples: int = rng(NONNEG, 0)                      # MC dropout passes at test time
    # protocol=tuned: this arm's search space, keys relative to `regularizer` (regbench/tuning/space.py);
    # a fixed run ignores it
    tune: Optional[dict[str, Any]] = None


# -------------------------------------------------------------------------------- optimization
@dataclass
class OptimConfig:
    name: str = one_of("adam", "sgd")
    lr: float = rng(Interval(0, FLOAT32_MAX, False, True))
    batch_size: int = rng(POS_INT)        # and at most the training examples (checked once the data are loaded)
    momentum: float = rng(Interval(0, 1, True, False), 0.0)   # sgd only


@dataclass
class TrainerConfig:
    # Lightning Trainer arguments, Lightning's names, passed through unchanged
    max_epochs: int = rng(Interval(1, 1_000_000))
    accelerator: str = one_of("auto", "cpu", "gpu", "cuda", "mps")
    devices: Any = 1                                  # a positive int, "auto" or a list of device indices
    # no 16-mixed: the steps run outside Lightning's optimizer wrapper, so no gradient scaler;
    # no 64-true: the data tensors stay float32
    precision: str = one_of("32-true", "bf16-mixed")
    deterministic: bool = True
    gradient_clip_val: Optional[float] = rng(POS, None)  # clip each replica's gradient to this total L2 norm (none = off)
    # regbench's own (not Trainer arguments)
    threads: int = rng(Interval(0, 1024))             # torch intra-op threads; 0 = leave torch's default
    progress_every: int = rng(NONNEG)                 # epochs between progress lines; 0 = none
    eval_batch_size: int = rng(POS_INT)
    checkpoint_every: int = rng(NONNEG)               # epochs between resumable checkpoints; 0 = none
    progress_bar: Any = "auto"                        # a live epoch bar: auto (on a terminal, not in a worker), true, false


@dataclass
class LoggerConfig:
    name: str = one_of("tensorboard", "csv", "mlflow")
    tracking_uri: Optional[str] = None               # mlflow only: a folder (file store) or an MLflow URI


# ------------------------------------------------------------------------------------ protocol
SAMPLERS = ("grid", "random", "tpe")
# what selection may read: validation metrics only (the test split never influences a choice)
SELECTION_METRICS = ("val/acc", "val/loss", "best_val/acc", "best_val/loss")


@dataclass
class ProtocolConfig:
    """`fixed`: each arm at the strength its YAML sets. `tuned`: each arm tuned with the same budget
    (trials x tune_seeds) on validation, then its chosen config trained on fresh final seeds."""
    name: str = one_of("fixed", "tuned")
    metric: str = one_of(*SELECTION_METRICS)   # the objective a run returns (to a sweeper) and tuning maximizes/minimizes
    trials: Optional[int] = rng(POS_INT, None)            # N per arm
    tune_seeds: Optional[int] = rng(POS_INT, None)        # k seeds per trial: tune_seed_start .. +k-1
    tune_seed_start: Optional[int] = rng(NONNEG, None)
    final_seeds: Optional[int] = rng(POS_INT, None)       # M fresh seeds: final_seed_start .. +M-1
    final_seed_start: Optional[int] = rng(NONNEG, None)
    sampler: Optional[str] = one_of(*SAMPLERS, default=None)
    sampler_seed: Optional[int] = rng(NONNEG, None)
    stack: bool = True                                    # train a trial's seeds as one stacked model
    stack_trials: Optional[int] = rng(POS_INT, None)      # at most this many independent trials in one population (None: 1)
    tune: Optional[dict[str, Any]] = None                 # the shared space of every arm (root-relative keys)
    # set by the protocol on the runs it trains (never by hand): the record's role and trial
    role: Optional[str] = one_of("tune", "final", default=None)
    trial: Optional[int] = rng(NONNEG, None)
    study: Optional[str] = None


# ---------------------------------------------------------------------------------------- root
@dataclass
class RunConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    regularizer: RegularizerConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = rng(Interval(0, SEED_MAX))
    name: str = MISSING                 # runs go to <runs_root>/<name>/<run id>; one folder name
    runs_root: str = MISSING
    force: bool = False                 # rerun a run whose results.json already says ok
    replicas: int = rng(POS_INT)        # >1: train seeds seed..seed+replicas-1 stacked in one model
    protocol: ProtocolConfig = MISSING  # fixed (default) or tuned (conf/protocol/)


def _check_ranges(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key)
            continue
        if value is None:
            continue
        if "range" in f.metadata and value not in f.metadata["range"]:
            raise ConfigError(f"{key}={value!r} is out of range: allowed {f.metadata['range']}")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(f.metadata['choices'])}")


def check_name(name: Any) -> None:
    """`name` is one folder name inside runs_root: not empty, no path separator, not '.' or '..'."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"name={name!r} is not allowed: a single folder name inside runs_root "
                          f"(not empty, no '/', not '.' or '..')")


def _check_devices(devices: Any) -> None:
    ok = (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
          or (isinstance(devices, list) and devices and len(set(devices)) == len(devices)
              and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices)))
    if not ok:
        raise ConfigError(f"trainer.devices={devices!r} is not allowed: a positive integer, auto, "
                          f"or a list of distinct device indices (e.g. [0])")


def _check_resize(resize: list[int] | None) -> None:
    if resize is not None and (len(resize) != 2 or not all(1 <= v <= 4096 for v in resize)):
        raise ConfigError(f"data.resize={list(resize)!r} is not allowed: [H, W] with H and W in [1, 4096], or null")


def _require(cfg: RunConfig) -> None:
    """Cross-field rules: a component's options that its kind needs."""
    check_name(cfg.name)
    _check_devices(cfg.trainer.devices)
    _check_resize(cfg.data.resize)
    if cfg.seed + cfg.replicas - 1 > SEED_MAX:
        raise ConfigError(f"seed={cfg.seed} with replicas={cfg.replicas}: the group's last seed "
                          f"{cfg.seed + cfg.replicas - 1} is out of range: allowed [0, {SEED_MAX}]")
    if cfg.trainer.progress_bar not in ("auto", True, False):
        raise ConfigError(f"trainer.progress_bar={cfg.trainer.progress_bar!r} is not allowed: choose auto, true or false")
    d, e = cfg.regularizer.dropout, cfg.regularizer.early_stop
    if d is not None:
        if d.kind == "dropblock" and d.block_size is None:
            raise ConfigError("regularizer.dropout.block_size is required for kind=dropblock: allowed [1, inf)")
        if d.conv_p is not None and d.kind not in ELEMENTWISE_KINDS:
            raise ConfigError(f"regularizer.dropout.conv_p={d.conv_p} is only used by the element-wise kinds "
                              f"{', '.join(ELEMENTWISE_KINDS)} (kind={d.kind}): set regularizer.dropout.conv_p=null")
        if d.block_size is not None and d.kind != "dropblock":
            raise ConfigError(f"regularizer.dropout.block_size={d.block_size} is only used by kind=dropblock "
                              f"(kind={d.kind}): set regularizer.dropout.block_size=null")
        if d.schedule == "curriculum" and d.schedule_gamma is None:
            raise ConfigError("regularizer.dropout.schedule_gamma is required for schedule=curriculum: allowed (0, inf)")
        if d.schedule == "early" and d.schedule_until is None:
            raise ConfigError("regularizer.dropout.schedule_until is required for schedule=early: allowed (0, 1]")
    if e is not None:
        needs = {"patience": ["patience"], "gl": ["alpha"], "pq": ["alpha", "strip"], "up": ["strip", "strips"]}
        for k in needs[e.criterion]:
            if getattr(e, k) is None:
                raise ConfigError(f"regularizer.early_stop.{k} is required for criterion={e.criterion}")
    if e is not None and e.criterion != "patience" and e.min_delta != 0:
        raise ConfigError(f"regularizer.early_stop.min_delta={e.min_delta} is only used by criterion=patience "
                          f"(criterion={e.criterion}): leave it at 0")
    if cfg.optim.name == "adam" and cfg.optim.momentum != 0:
        raise ConfigError(f"optim.momentum={cfg.optim.momentum} is only used by optim=sgd: leave it at 0 with adam")
    if cfg.replicas > 1 and cfg.seed % cfg.replicas:
        raise ConfigError(f"seed={cfg.seed} with replicas={cfg.replicas}: seed must be a multiple of replicas "
                          f"(a group is seeds k*replicas .. k*replicas+replicas-1, and its records depend on "
                          f"the whole group), e.g. seed={cfg.seed - cfg.seed % cfg.replicas}")
    p = cfg.protocol
    if p.name == "tuned":
        for k in ("trials", "tune_seeds", "tune_seed_start", "final_seeds", "final_seed_start", "sampler",
                  "sampler_seed"):
            if getattr(p, k) is None:
                raise ConfigError(f"protocol.{k} is required for protocol=tuned (conf/protocol/tuned.yaml sets it)")
        tune = range(p.tune_seed_start, p.tune_seed_start + p.tune_seeds)
        final = range(p.final_seed_start, p.final_seed_start + p.final_seeds)
        shared = sorted(set(tune) & set(final))
        if shared:
            raise ConfigError(
                f"protocol.tune_seeds and protocol.final_seeds overlap: tuning seeds {tune.start}..{tune.stop - 1} "
                f"and final seeds {final.start}..{final.stop - 1} share {len(shared)} seed(s) ({shared[0]}...); "
                f"final numbers need fresh seeds: set protocol.final_seed_start >= {tune.stop} "
                f"or <= {tune.start - p.final_seeds}")
        if cfg.replicas != 1 and p.role is None:
            raise ConfigError(f"replicas={cfg.replicas} with protocol=tuned: the protocol stacks each trial's "
                              f"seeds itself (protocol.stack=true); leave replicas at 1")
    if cfg.regularizer.rdrop_alpha is not None and d is None:
        raise ConfigError("regularizer.rdrop_alpha needs regularizer.dropout (R-Drop compares two dropout passes)")
    if cfg.regularizer.mc_samples > 0 and d is None:
        raise ConfigError("regularizer.mc_samples > 0 needs regularizer.dropout (MC dropout samples dropout masks)")


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Merge `cfg` into the schema and check every value; return the typed config or raise ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        # OmegaConf's message already names the full key and the value; keep its first lines
        msg = str(e).split("\n    full_key")[0].strip()
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {msg}" if key and key not in msg else msg) from None
    _check_ranges(run, "")
    _require(run)
    return run
