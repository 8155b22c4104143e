"""A stand-in population engine for the stacking launcher's command-line tests (imported at start-up
when this folder is on PYTHONPATH, in the sweep's process and in every joblib worker).

`REGBENCH_TEST_GROUPS=FILE` replaces `regbench.app.run_group` by a fake that trains nothing: it
appends one JSON line per call to FILE (pid, label, the folders and seeds it was given), writes each
config an ordinary-looking record into its folder, with status from `REGBENCH_TEST_GROUP_STATUS`
("1=diverged,2=failed": by seed; default ok) and `protocol.metric` = seed / 100 + dropout p, and
returns those statuses. What the launcher does around run_group is then real: composition,
grouping, Hydra jobs, callbacks, exit status. The real engine is exercised where it is available
(tests/test_stacking_launcher.py, the `engine` tests).
"""

import os

_log = os.environ.get("REGBENCH_TEST_GROUPS")
if _log:
    import json

    import regbench.app as _app

    _status = dict(kv.split("=") for kv in os.environ.get("REGBENCH_TEST_GROUP_STATUS", "").split(",") if kv)

    def _fake_run_group(cfgs, dirs, label, keep_whole=False, rcs=None):
        from omegaconf import OmegaConf

        from regbench.records import empty_record, write_record

        seeds = [int(c.seed) for c in cfgs]
        with open(_log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "label": label, "dirs": [str(d) for d in dirs], "seeds": seeds,
                                "keep_whole": keep_whole}) + "\n")
        out = []
        for c, d, s in zip(cfgs, dirs, seeds):
            status = _status.get(str(s), "ok")
            p = float(OmegaConf.select(c, "regularizer.dropout.p", default=0.0) or 0.0)
            record = empty_record()
            record.update(status=status, run_id=d.name, seed=s, config=OmegaConf.to_container(c, resolve=True))
            record["metrics"][str(c.protocol.metric)] = s / 100 + p
            write_record(d, record)
            out.append(status)
        return out

    _app.run_group = _fake_run_group

_slurm = os.environ.get("REGBENCH_TEST_FAKE_SLURM")
if _slurm:  # SLURM without a cluster: each submitted task runs here, at once, and its result is kept
    import json
    from pathlib import Path

    import submitit

    class _FakeJob:
        def __init__(self, job_id, result):
            self.job_id, self._result = job_id, result
            self.paths = type("paths", (), {"result_pickle": Path(__file__), "stderr": Path(os.devnull)})()

        def results(self):
            return [self._result]

    class _FakeExecutor:  # submitit.AutoExecutor's interface, as slurm_launcher.make_executor uses it
        def __init__(self, **kwargs):
            pass

        def update_parameters(self, **kwargs):
            pass

        def map_array(self, fn, *arrays):
            with open(_slurm, "a") as f:
                f.write(json.dumps({"tasks": len(arrays[0]), "fn": type(fn).__name__}) + "\n")
            return [_FakeJob(f"1_{k}", fn(*args)) for k, args in enumerate(zip(*arrays))]

    submitit.AutoExecutor = _FakeExecutor
