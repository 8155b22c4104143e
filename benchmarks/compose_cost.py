"""What Hydra's per-job config composition costs in the submitting process (README, "A 10,000-run study").
`.venv/bin/python benchmarks/compose_cost.py`: composes 100 job configs of a sweep, as Hydra's sweeper
(to validate the batch) and regbench's SLURM launcher (to filter finished runs) each do once per job."""
import time
from pathlib import Path
from hydra import initialize_config_dir, compose
from regbench.naming import register_resolvers
register_resolvers()
with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
    t = time.perf_counter(); c0 = time.process_time()
    for s in range(100):
        compose(config_name="config", overrides=[f"seed={s}", "regularizer=dropout"], return_hydra_config=True)
    print(f"{(time.perf_counter()-t)/100*1000:.0f} ms wall, {(time.process_time()-c0)/100*1000:.0f} ms CPU per job config")
