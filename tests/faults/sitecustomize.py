"""Fault injection for command-line tests (imported at start-up when this folder is on PYTHONPATH).

`REGBENCH_TEST_RAISE_SEEDS=1,3` makes training raise RuntimeError for those seeds, in the main
process and in every worker, as a bug or a lost device would: a run that fails after it started.
Bad input cannot stand in for that any more; it is refused before a run starts.
"""

import os

_seeds = os.environ.get("REGBENCH_TEST_RAISE_SEEDS")
if _seeds:
    import regbench.app as _app

    _raise = {int(s) for s in _seeds.split(",")}

    def _fail_if_chosen(seeds):
        hit = sorted(set(seeds) & _raise)
        if hit:
            raise RuntimeError(f"injected failure for seed(s) {hit} (REGBENCH_TEST_RAISE_SEEDS)")

    def _train(rc, *args, _real=_app.train, **kwargs):
        _fail_if_chosen([rc.seed])
        return _real(rc, *args, **kwargs)

    def _train_population(cfgs, rcs, *args, _real=_app.train_population, **kwargs):
        _fail_if_chosen([rc.seed for rc in rcs])
        return _real(cfgs, rcs, *args, **kwargs)

    _app.train = _train
    _app.train_population = _train_population
