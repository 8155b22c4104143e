"""regbench's entry point: `python run.py [overrides]`, `python run.py -m ...` for sweeps."""

import regbench  # noqa: F401  (first: start-up time is measured from its import)
import hydra
from omegaconf import DictConfig

from regbench.naming import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from regbench.app import run  # heavy imports (torch, Lightning) only once a run starts

    return run(cfg)


if __name__ == "__main__":
    import sys

    from regbench.argv import check

    sys.argv = check(sys.argv)  # mistakes Hydra answers unhelpfully (+experiment=, a preset without -m, ...)
    main()
