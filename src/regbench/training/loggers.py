"""The run's experiment logger (conf/logger/): Lightning's own TensorBoard, CSV or MLflow logger,
and what each one gets when the run ends: the same flattened hyperparameters and final metrics.

TensorBoard specifics (what `tensorboard --logdir runs/` shows):
- events are written straight into the run folder, so a run is named after it (no `/tb` suffix);
- only the hparams plugin's session records are written per run, never its experiment record: the
  HParams tab then builds the experiment from all runs, marks the keys whose values differ across
  them, lists those first and ticks the first five (constant keys such as `data.download` stay
  unticked), and keeps every key any run has (a dropout run's `regularizer.dropout.p` beside an
  early-stopping run's `regularizer.early_stop.patience`);
- the final test metrics are scalars at the last epoch's step (the hparams plugin reads metric
  values from scalars), not `hp/*` cards at step 0, under `z_final/`: Scalars and Time Series order
  their card groups by name, so the curves (`train/*`, `val/*`) come first;
- the hparams plugin knows no integer type (it shows a number as `0.0000`): integer seeds are written
  as their text (`0`), which also lets the dashboard filter seeds by ticking them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from regbench.config import ConfigError

KINDS = ("tensorboard", "csv", "mlflow")
FINAL_METRICS = ("test/acc", "test/loss")   # the curves already carry train/* and val/*
TENSORBOARD_FINAL = {"test/acc": "z_final/test_acc", "test/loss": "z_final/test_loss"}
# config keys that say where or how verbosely a run works, not what it is
NOT_HPARAMS = ("name", "runs_root", "force", "logger", "data.root", "data.checksums", "data.download",
               "trainer.progress_every", "trainer.progress_bar", "trainer.checkpoint_every", "trainer.eval_batch_size")


class MissingLoggerPackage(ConfigError):
    """The chosen logger's optional package is not installed (refused before training, exit 2)."""


def flat_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """`{"regularizer": {"dropout": {"p": 0.5}}}` -> `{"regularizer.dropout.p": 0.5}`.

    `config` is the resolved config as plain containers (OmegaConf.to_container). Absent (None)
    values are left out, not stored as 'None', so a mixed sweep keeps each arm's own keys; lists
    become their text; ints stay ints (the seed).
    """
    flat: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if key in NOT_HPARAMS or v is None:
                continue
            if isinstance(v, Mapping):
                walk(v, f"{key}.")
            elif isinstance(v, (bool, int, float, str)):
                flat[key] = v
            else:
                flat[key] = str(v)

    walk(config, "")
    return flat


def build_logger(kind: str, run_dir: Path, *, experiment: str, tracking_uri: str | None = None,
                 purge_step: int | None = None):
    """Lightning's logger of `kind` for the run in `run_dir`.

    purge_step (TensorBoard): a resumed run logs again from the epoch after its checkpoint; TensorBoard
    drops what the interrupted process wrote from that step on, so each epoch appears once.
    """
    run_dir = Path(run_dir)
    if kind == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        extra = {"purge_step": purge_step} if purge_step is not None else {}
        return TensorBoardLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="",
                                 default_hp_metric=False, **extra)
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise MissingLoggerPackage("logger=mlflow needs the mlflow package: pip install -e '.[mlflow]' "
                                       "(or use logger=tensorboard or logger=csv)") from None
        uri = tracking_uri or "mlruns"
        if "://" not in uri and not uri.startswith(("file:", "sqlite:")):
            uri = Path(uri).resolve().as_uri()   # a folder: MLflow's local file store
        return _mlflow_logger(uri, experiment, run_dir.name)
    raise ValueError(f"logger={kind!r} is not allowed: choose one of {', '.join(KINDS)}")


def _mlflow_logger(uri: str, experiment: str, run_name: str):
    """MLFlowLogger, its store and experiment created under an exclusive lock: parallel jobs (joblib)
    opening a new SQLite store at once race in MLflow's table migrations and experiment creation."""
    import fcntl
    import hashlib
    import tempfile

    from pytorch_lightning.loggers import MLFlowLogger

    lock = Path(tempfile.gettempdir()) / f"regbench-mlflow-{hashlib.sha1(uri.encode()).hexdigest()[:16]}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        logger = MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri)
        logger.experiment  # noqa: B018 - opens the store (creating its tables) and the experiment
        _ = logger.run_id
    return logger


def log_final(logger, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    """Give `logger` the run's hyperparameters and final metrics (at `step`, the last epoch), then close it."""
    final = {k: float(metrics[k]) for k in FINAL_METRICS if k in metrics}
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        _tensorboard_session(logger, {k: str(v) if _is_seed(k, v) else v for k, v in hparams.items()})
        final = {TENSORBOARD_FINAL[k]: v for k, v in final.items()}
    else:
        logger.log_hyperparams(dict(hparams))
    logger.log_metrics(final, step=step)
    logger.finalize("success")


def _is_seed(key: str, value: Any) -> bool:
    return key.rsplit(".", 1)[-1].endswith("seed") and isinstance(value, int) and not isinstance(value, bool)


def _tensorboard_session(logger, hparams: dict[str, Any]) -> None:
    """The hparams plugin's session start and end records, without its per-run experiment record
    (which would make TensorBoard take one run's keys as the whole sweep's)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    _experiment, session_start, session_end = hparams_summaries(hparams, {})
    writer = logger.experiment._get_file_writer()
    writer.add_summary(session_start)
    writer.add_summary(session_end)
