"""Config composition for every group option, and validation of bad input."""

from __future__ import annotations

import pytest

from conftest import CONF, cli, compose
from regbench.config import ConfigError, validate

GROUPS = ["data", "model", "regularizer", "optim", "trainer"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"])
    rc = validate(cfg)
    if group == "trainer":
        assert rc.trainer.max_epochs >= 1
    else:
        assert getattr(rc, group).name == option


@pytest.mark.parametrize("option", options("setting"))
def test_every_study_setting_composes_and_validates(option):
    """A setting is named data_model[_nSIZE][_eEPOCHS]: what it composes."""
    import re

    rc = validate(compose([f"+setting={option}"]))
    m = re.fullmatch(r"([a-z0-9]+)_([a-z0-9_]+?)(?:_n(\d+))?(?:_e(\d+))?", option)
    assert m, option
    data, model, size, epochs = m.groups()
    assert (rc.data.name, rc.model.name) == (data, model)
    if size:
        assert rc.data.train_size == int(size)
    if epochs:
        assert rc.trainer.max_epochs == int(epochs)


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_preset_composes_and_validates(option):
    rc = validate(compose([f"experiment={option}"]))
    # a preset writes into its own folder, or into the folder of the preset it extends (X_sanity into X)
    assert option.startswith(rc.name) and rc.runs_root == "experiments"


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_presets_launcher_is_the_one_it_names(option):
    """A preset's `override /hydra/launcher: X` must be what the sweep gets: config.yaml's own launcher
    override comes after the experiment in its defaults list, so a preset that named Hydra's joblib
    launcher silently got the stacking one."""
    import re

    from hydra import compose as hydra_compose, initialize_config_dir

    from conftest import CONF

    named = re.search(r"override /hydra/launcher: (\w+)", (CONF / "experiment" / f"{option}.yaml").read_text())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={option}"], return_hydra_config=True)
    chosen = cfg.hydra.runtime.choices["hydra/launcher"]
    assert chosen == (named.group(1) if named else "regbench"), option


def test_defaults_are_the_mnist1d_benchmark_protocol():
    rc = validate(compose())
    assert (rc.data.name, rc.model.name, rc.regularizer.name) == ("mnist1d", "mlp", "none")
    assert (rc.optim.name, rc.optim.lr, rc.optim.batch_size) == ("adam", 0.01, 100)
    steps = (4000 - rc.data.val_size) // rc.optim.batch_size * rc.trainer.max_epochs
    assert 5500 <= steps <= 6500, steps  # "about 6000 steps"


def test_combined_arm_takes_its_values_from_both_components():
    both = validate(compose(["regularizer=dropout_early_stop"])).regularizer
    d = validate(compose(["regularizer=dropout"])).regularizer.dropout
    e = validate(compose(["regularizer=early_stop"])).regularizer.early_stop
    assert both.dropout == d and both.early_stop == e and both.name == "dropout_early_stop"


# (override, text the message must contain): each names the key, the value and what is allowed
BAD = [
    ("regularizer=dropout regularizer.dropout.p=1.5", "regularizer.dropout.p=1.5 is out of range: allowed [0, 1)"),
    ("regularizer=dropout regularizer.dropout.p=-0.1", "regularizer.dropout.p=-0.1 is out of range"),
    ("regularizer=dropout regularizer.dropout.input_p=1.0", "regularizer.dropout.input_p=1.0 is out of range: allowed [0, 1)"),
    ("regularizer=early_stop regularizer.early_stop.patience=0", "regularizer.early_stop.patience=0 is out of range: allowed [1, inf)"),
    ("regularizer=early_stop regularizer.early_stop.min_delta=-1", "regularizer.early_stop.min_delta=-1.0 is out of range"),
    ("regularizer=early_stop regularizer.early_stop.monitor=val/f1", "regularizer.early_stop.monitor='val/f1' is not allowed: choose one of val/loss, val/acc"),
    ("trainer.max_epochs=-3", "trainer.max_epochs=-3 is out of range: allowed [1, 1000000]"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is out of range"),
    ("optim.lr=0", "optim.lr=0.0 is out of range: allowed (0, 3.40282e+38]"),
    ("optim.batch_size=0", "optim.batch_size=0 is out of range"),
    ("data.val_size=0", "data.val_size=0 is out of range"),
    ("data.train_size=-5", "data.train_size=-5 is out of range"),
    ("seed=-1", "seed=-1 is out of range: allowed [0, 4294967295]"),
    ("model.hidden=0", "model.hidden=0 is out of range"),
    ("trainer.threads=-2", "trainer.threads=-2 is out of range"),
    ("optim=sgd optim.momentum=1.0", "optim.momentum=1.0 is out of range: allowed [0, 1)"),
    ("+optim.momentum=0.9", "optim.momentum=0.9 is only used by optim=sgd"),
    ("replicas=10 seed=3", "seed=3 with replicas=10: seed must be a multiple of replicas"),
    ("regularizer=early_stop_gl +regularizer.early_stop.min_delta=0.1", "min_delta=0.1 is only used by criterion=patience"),
    ("regularizer=weight_decay regularizer.weight_decay=-1e-4", "regularizer.weight_decay=-0.0001 is out of range"),
    ("regularizer=dropout regularizer.dropout.kind=spatial",
     "regularizer.dropout.conv_p=0.1 is only used by the element-wise kinds bernoulli, gaussian, alpha (kind=spatial)"),
    ("regularizer=spatial_dropout +regularizer.dropout.block_size=3",
     "regularizer.dropout.block_size=3 is only used by kind=dropblock (kind=spatial)"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_key_value_and_range(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides.split()))
    assert message in str(e.value)


def test_wrong_type_and_unknown_key_are_refused():
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        validate(compose(["trainer.max_epochs=many"]))
    with pytest.raises(ConfigError, match="dropuot"):
        validate(compose(["+regularizer.dropuot=0.5"]))


def test_component_options_its_kind_needs():
    with pytest.raises(ConfigError, match="block_size is required"):
        validate(compose(["regularizer=dropout", "regularizer.dropout.kind=dropblock"]))
    with pytest.raises(ConfigError, match="mc_samples > 0 needs regularizer.dropout"):
        validate(compose(["+regularizer.mc_samples=10"]))


def test_cli_rejects_bad_value_before_training_and_writes_nothing(tmp_path):
    r = cli("regularizer=dropout", "regularizer.dropout.p=1.5", f"runs_root={tmp_path}")
    assert r.returncode == 2, r.stderr
    assert "regularizer.dropout.p=1.5 is out of range: allowed [0, 1)" in r.stderr
    assert not list(tmp_path.rglob("*"))  # no run folder, no file


def test_cli_unknown_group_option_lists_the_options(tmp_path):
    r = cli("regularizer=dropuot", f"runs_root={tmp_path}")
    assert r.returncode != 0
    assert "Could not find 'regularizer/dropuot'" in r.stderr
    for option in ("none", "dropout", "early_stop", "dropout_early_stop"):
        assert option in r.stderr
    assert not list(tmp_path.rglob("results.json"))
