"""Synthetic results records with known statistics, for tests and demos of the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regbench.naming import short_hash
from regbench.records import empty_record, write_record


def make_record(*, seed: int, acc: float, regularizer: str = "none", data: str = "mnist1d",
                model: str = "mlp", status: str = "ok", group_hash: str = "g0", epochs: int = 5,
                train_acc: float | None = None, loss: float | None = None, stopped_epoch: int | None = None,
                config: dict[str, Any] | None = None, train_seconds: float = 1.0) -> dict[str, Any]:
    """A record whose test accuracy is `acc`; the history rises linearly to it over `epochs` epochs
    (or up to `stopped_epoch`, which marks an early stop)."""
    r = empty_record()
    n = epochs if stopped_epoch is None else stopped_epoch + 1
    train_acc = min(1.0, acc + 0.05) if train_acc is None else train_acc
    loss = 1.0 - acc if loss is None else loss
    r.update(
        status=status, seed=seed, data=data, model=model, regularizer=regularizer, group_hash=group_hash,
        config=config if config is not None else {
            "seed": seed, "data": {"name": data}, "model": {"name": model},
            "regularizer": {"name": regularizer}, "trainer": {"max_epochs": epochs}},
        best_epoch=n - 1, epochs_trained=n, steps=10 * n, train_seconds=train_seconds,
        stopped_early=stopped_epoch is not None, stopped_epoch=stopped_epoch,
        stop_reason="patience" if stopped_epoch is not None else None,
        history={"epoch": list(range(n)),
                 "train/acc": [train_acc * (i + 1) / n for i in range(n)],
                 "val/acc": [acc * (i + 1) / n for i in range(n)],
                 "train/loss": [loss + 1.0 / (i + 1) for i in range(n)],
                 "val/loss": [loss + 1.2 / (i + 1) for i in range(n)]},
    )
    # like a real run id: different settings (config, group) never share one
    r["run_id"] = f"{data}-{model}-{regularizer}-s{seed}-{short_hash([r['config'], group_hash])}"
    if status in ("ok", "diverged"):  # a diverged run may still carry (meaningless) numbers
        r["metrics"] = {"test/acc": acc, "test/loss": loss, "train/acc": train_acc, "train/loss": loss / 2,
                        "val/acc": acc, "val/loss": loss, "best_val/acc": acc, "best_val/loss": loss}
    if status == "diverged":
        r["error"], r["diverged_epoch"] = "loss became NaN", 1
        r["metrics"]["train/loss"] = float("nan")
    elif status == "failed":
        r["error"] = "RuntimeError: boom"
    return r


def write_runs(root: str | Path, records: list[dict[str, Any]]) -> list[Path]:
    """Write each record into root/<run_id>-<i>/results.json."""
    root = Path(root)
    return [write_record(root / f"{r['run_id']}-{i}", r) for i, r in enumerate(records)]
