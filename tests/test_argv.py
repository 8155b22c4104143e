"""Command-line mistakes that Hydra answers unhelpfully get regbench's own answer."""

from __future__ import annotations

import pytest

from conftest import cli
from regbench.argv import check


def refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as e:
        check(["run.py", *args])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_plus_experiment_is_the_optional_group_chosen_without_plus(capsys):
    assert check(["run.py", "-m", "+experiment=dropout_vs_early_stopping", "seed=0"]) == \
        ["run.py", "-m", "experiment=dropout_vs_early_stopping", "seed=0"]
    assert "experiment=dropout_vs_early_stopping (no '+')" in capsys.readouterr().err


def test_a_preset_sweep_without_multirun_says_to_add_m(capsys):
    err = refused(capsys, "experiment=dropout_vs_early_stopping_sanity")
    assert "is a preset sweep: run it with -m (python run.py -m experiment=dropout_vs_early_stopping_sanity)" in err
    assert check(["run.py", "-m", "experiment=dropout_vs_early_stopping_sanity"])  # fine with -m


@pytest.mark.parametrize("args", [["regularizer.dropout.p=0.3"], ["+regularizer.dropout.p=0.3"],
                                  ["regularizer=none,early_stop", "regularizer.dropout.p=0.3"]])
def test_a_dropout_key_on_an_arm_without_dropout_says_to_pick_the_dropout_arm(capsys, args):
    err = refused(capsys, *args)
    assert "has no dropout component" in err and "regularizer=dropout regularizer.dropout.p=0.3" in err


def test_component_keys_of_arms_that_have_them_pass():
    for args in (["regularizer=dropout", "regularizer.dropout.p=0.3"],
                 ["-m", "regularizer=dropout,dropout_early_stop", "regularizer.dropout.p=0.3"],
                 ["regularizer=dropout_early_stop", "regularizer.early_stop.patience=5"],
                 ["+regularizer.dropuot=0.5"]):  # an unknown key: left to the config's own check
        assert check(["run.py", *args]) == ["run.py", *args]


def test_plus_experiment_through_the_command_line():
    r = cli("+experiment=dropout_vs_early_stopping_sanity", "--cfg", "job")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "name: dropout_vs_early_stopping" in r.stdout
