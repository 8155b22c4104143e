"""Training health: which finished runs did not train at all ("collapsed").

A run that ends without a non-finite loss can still have failed to learn: on MNIST-5k the seed
document's CNN sometimes sits at exactly 10 % train and test accuracy with ~90 % of its hidden units
dead. Such a run is a failure of training, not a sample of the arm's accuracy, so it gets the status
``collapsed``: counted per arm (with its rate), never averaged into an arm's statistics.

The rule (``collapse_reason``), applied to a record whose status is ``ok``:

- **near chance**: final ``train/acc`` (eval mode, kept weights) <= 1/K + ``CHANCE_MARGIN``, K the
  number of classes (``extra.mechanism.num_classes``, else 10: every built-in dataset has 10); or
- **dead units**: at least ``DEAD_FRACTION`` of the hidden units (conv channels count as units) are
  never active on the test set (``extra.mechanism.layers[*].dead_units / units``).

The thresholds sit far from every healthy run of the committed study: its healthy runs have train
accuracy >= 0.37 (the logistic-regression floor) and at most 72 % dead units; its collapsed runs have
train accuracy 0.10 and 87-93 % dead units. The rule is applied when a record is written
(``regbench.app``) and again when records are read (``regbench.reporting.collect``), so records
written before it existed are classified too.
"""

from __future__ import annotations

import math
from typing import Any

from regbench.records import COLLAPSED, lookup

CHANCE_MARGIN = 0.05     # train accuracy within 5 pp of chance: the net has learnt (next to) nothing
DEAD_FRACTION = 0.85     # >= 85 % of hidden units never active on the test set
DEFAULT_CLASSES = 10     # every built-in dataset (mnist1d, mnist5k, digits, mnist, fashion_mnist, cifar10)


def dead_fraction(record: dict[str, Any]) -> float | None:
    """Fraction of hidden units never active on the test set; None without mechanism measurements."""
    layers = lookup(record, "extra", "mechanism", "layers")
    if not isinstance(layers, list):
        return None
    units = sum(int(l.get("units") or 0) for l in layers if isinstance(l, dict))
    dead = sum(int(l.get("dead_units") or 0) for l in layers if isinstance(l, dict))
    return dead / units if units else None


def chance_accuracy(record: dict[str, Any]) -> float:
    k = lookup(record, "extra", "mechanism", "num_classes")
    return 1.0 / (k if isinstance(k, int) and k > 0 else DEFAULT_CLASSES)


def collapse_reason(record: dict[str, Any]) -> str | None:
    """Why an ok record counts as collapsed (a short sentence), or None when it trained."""
    if record.get("status") != "ok":
        return None
    train_acc = lookup(record, "metrics", "train/acc")
    chance = chance_accuracy(record)
    if isinstance(train_acc, (int, float)) and not math.isnan(train_acc) and train_acc <= chance + CHANCE_MARGIN:
        return f"train/acc {train_acc:.3f} within {CHANCE_MARGIN:g} of chance ({chance:.3f})"
    dead = dead_fraction(record)
    if dead is not None and dead >= DEAD_FRACTION:
        return f"{dead:.0%} of hidden units dead (>= {DEAD_FRACTION:.0%})"
    return None


def health_status(record: dict[str, Any]) -> str:
    """The record's status with the health rule applied: ``collapsed`` for an ok run that did not train."""
    return COLLAPSED if collapse_reason(record) else record["status"]


def mark_health(record: dict[str, Any]) -> dict[str, Any]:
    """Set ``status`` (and ``extra.collapse_reason``) of a record about to be written; returns it."""
    reason = collapse_reason(record)
    if reason:
        record["status"] = COLLAPSED
        record.setdefault("extra", {})["collapse_reason"] = reason
    return record
