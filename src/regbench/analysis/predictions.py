"""Test-set predictions stored compactly in a record, for paired tests over test examples.

``encode(pred, y)`` -> ``{"encoding": "uint8-base64", "n": N, "pred": "...", "target": "..."}``: the
predicted and true class of every test example as one byte each, base64 (about 2.7 kB per 1000
examples). ``correct(entry)`` decodes the per-example correctness that McNemar's test and a paired
bootstrap over test examples need (``regbench.reporting.stats.mcnemar_runs``).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

ENCODING = "uint8-base64"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def encode(pred, target) -> dict[str, Any]:
    pred, target = np.asarray(pred).astype(np.int64).ravel(), np.asarray(target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} differ in shape")
    if pred.size and (min(pred.min(), target.min()) < 0 or max(pred.max(), target.max()) > 255):
        raise ValueError("classes must lie in 0..255 to be stored as one byte each")
    return {"encoding": ENCODING, "n": int(pred.size), "pred": _b64(pred), "target": _b64(target)}


def decode(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target) as int64 arrays; raises ValueError for an entry this module did not write."""
    if not isinstance(entry, dict) or entry.get("encoding") != ENCODING:
        raise ValueError(f"not a {ENCODING} predictions entry")
    pred = np.frombuffer(base64.b64decode(entry["pred"]), dtype=np.uint8).astype(np.int64)
    target = np.frombuffer(base64.b64decode(entry["target"]), dtype=np.uint8).astype(np.int64)
    if pred.size != entry.get("n") or target.size != pred.size:
        raise ValueError("predictions entry is truncated")
    return pred, target


def correct(entry: dict[str, Any]) -> np.ndarray:
    pred, target = decode(entry)
    return pred == target
