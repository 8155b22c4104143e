"""Hydra callback: a tuned sweep is checked whole before any job runs.

With protocol=tuned, a bad search space, budget or seed split is an error of the sweep, not of one
job: `on_multirun_start` composes every job's config (the basic sweeper's expansion of the command
line and `hydra.sweeper.params`), validates it and parses its search space, and on the first error
prints it (naming the key) and exits with status 2, before Hydra writes anything. Fixed-protocol
sweeps are untouched: their invalid jobs are rejected one by one (README, "Bad input").
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override lists of the basic sweeper's jobs, in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class ProtocolCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "protocol.name") != "tuned":
            return
        if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
            return  # another sweeper expands the jobs: each job checks itself
        from hydra.core.global_hydra import GlobalHydra

        from regbench.config import ConfigError, validate
        from regbench.tuning.space import parse_space

        loader = GlobalHydra.instance().config_loader()
        for n, overrides in enumerate(job_overrides(config)):
            job = loader.load_sweep_config(config, overrides)
            with_hydra = job
            job = OmegaConf.masked_copy(with_hydra, [k for k in with_hydra if k != "hydra"])
            try:
                validate(job)
                parse_space(job)
            except ConfigError as e:
                print(f"regbench: invalid config ({' '.join(overrides) or 'job ' + str(n)}): {e}\n"
                      f"nothing was run or written (protocol=tuned checks every job first)", file=sys.stderr)
                sys.exit(2)
