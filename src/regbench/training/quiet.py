"""Silence, at their source, the messages every run used to print that say nothing about the run.

Each is targeted (one logger's one message, one warning's text); every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO = "pytorch_lightning.utilities.rank_zero"


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_known_noise() -> None:
    """Idempotent; called once per run before the Trainer is built."""
    lightning = logging.getLogger(LIGHTNING_INFO)
    if not any(isinstance(f, _DropMessages) for f in lightning.filters):
        # Lightning 2.6 advertises its cloud logger (litlogger) on every Trainer; it has no flag for it
        lightning.addFilter(_DropMessages("💡 Tip: For seamless cloud logging"))
    # torch >= 2.10 deprecates `isinstance(x, LeafSpec)`, which Lightning 2.6's _pytree still uses
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # Lightning checks for SLURM on every fit (even with a non-SLURM cluster environment given) and, when
    # an `srun` binary exists but this process was not started by srun, hints at srun for multi-node
    # jobs. A regbench run is one process on one device; hydra/launcher=slurm starts it under srun.
    from lightning_fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used",
                            category=PossibleUserWarning)
    # the engine's own optimizer steps inside the epoch (engine/module.py): Lightning holds none, by design
    warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")
