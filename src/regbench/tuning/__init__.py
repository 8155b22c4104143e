"""The tuned protocol (protocol=tuned): equal-budget tuning on validation, final numbers on fresh seeds.

    space.py   search spaces from the config (protocol.tune, regularizer.tune): parsed, checked, sampled
    study.py   one arm's Optuna study (SQLite in the sweep folder, resumable) and its final seeds
    hydra.py   the Hydra callback that checks every job of a tuned sweep before anything runs
"""
