"""A Hydra callback for tests: one JSON line per job's JobReturn, as the sweep's callbacks see it
(`+hydra.callbacks.probe._target_=probe.Probe`, REGBENCH_TEST_PROBE=FILE)."""

import json
import math
import os
from pathlib import Path

from hydra.experimental.callback import Callback


class Probe(Callback):
    def on_job_start(self, config, **kwargs):
        self._write({"event": "start", "run": Path(str(config.hydra.runtime.output_dir)).name})

    def on_job_end(self, config, job_return, **kwargs):
        value = job_return._return_value
        objective = float(value) if hasattr(value, "objective") else None
        self._write({"event": "end", "run": Path(str(job_return.hydra_cfg.hydra.runtime.output_dir)).name,
                     "job_status": job_return.status.name, "status": str(value), "seed": int(job_return.cfg.seed),
                     "objective": None if objective is None or math.isnan(objective) else objective,
                     "num": int(job_return.hydra_cfg.hydra.job.num)})

    @staticmethod
    def _write(entry):
        with open(os.environ["REGBENCH_TEST_PROBE"], "a") as f:
            f.write(json.dumps(entry) + "\n")
