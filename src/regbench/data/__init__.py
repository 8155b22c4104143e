"""Datasets: each loader returns a `DataSplits`; one registry entry per `conf/data/*.yaml`."""

from __future__ import annotations

from typing import Callable

from regbench.data.mnist1d import load_mnist1d
from regbench.data.splits import DataSplits

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "mnist1d": load_mnist1d,
}

__all__ = ["DATASETS", "DataSplits", "build_data"]


def build_data(name: str, **kwargs) -> DataSplits:
    return DATASETS[name](**kwargs)
