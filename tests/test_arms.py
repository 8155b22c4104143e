"""Every regularizer arm on every model: it acts where the model has the structure, and is refused
(naming arm and model) where it has not; every arm trains end to end and writes a valid record."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import CONF, compose
from regbench.config import validate
from regbench.models import MODELS, SlotError, build_model
from regbench.records import STATUSES
from regbench.regularizers import build_regularization
from regbench.regularizers.layers import DropConnectLinear, DropoutLayer
from test_training import train_in_process

ARMS = sorted(p.stem for p in (CONF / "regularizer").glob("*.yaml"))
INPUT = {"mlp": (40,), "resmlp": (40,), "logreg": (40,), "cnn1d": (40,), "seed_cnn": (1, 14, 14)}
# the documented support matrix (README): arms that need a structure only some models have
NEEDS = {
    "dropout": {"mlp", "resmlp", "cnn1d", "seed_cnn"}, "gaussian_dropout": {"mlp", "resmlp", "cnn1d", "seed_cnn"},
    "alpha_dropout": {"mlp", "resmlp", "cnn1d", "seed_cnn"}, "dropconnect": {"mlp", "resmlp", "seed_cnn"},
    "spatial_dropout": {"cnn1d", "seed_cnn"}, "dropblock": {"cnn1d", "seed_cnn"}, "drop_path": {"resmlp"},
}
for arm in ("dropout_early_stop", "scheduled_dropout", "early_dropout", "rdrop", "mc_dropout", "maxnorm_dropout",
            "dropout_weight_decay"):
    NEEDS[arm] = NEEDS["dropout"]


def regularization(arm: str):
    r = validate(compose([f"regularizer={arm}"])).regularizer
    return build_regularization(r.name, dropout=r.dropout, early_stop=r.early_stop, weight_decay=r.weight_decay,
                                maxnorm=r.maxnorm, rdrop_alpha=r.rdrop_alpha, mc_samples=r.mc_samples, max_epochs=10)


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_arm_acts_on_the_model_or_is_refused_by_name(arm, model):
    reg = regularization(arm)
    supported = model in NEEDS.get(arm, set(MODELS))
    kwargs = {"hidden": 100, "depth": 2} if model in ("mlp", "resmlp") else {}
    if not supported:
        with pytest.raises(SlotError) as e:
            build_model(model, INPUT[model], 10, reg.slots, regularizer=arm, **kwargs)
        assert f"regularizer={arm}" in str(e.value) and f"model={model}" in str(e.value)
        return
    torch.manual_seed(0)
    net = build_model(model, INPUT[model], 10, reg.slots, regularizer=arm, **kwargs)
    x = torch.randn(8, *INPUT[model])
    stochastic = [m for m in net.modules() if isinstance(m, (DropoutLayer, DropConnectLinear))]
    if arm in NEEDS:  # a dropout-family arm: its layers are in the net and training output is random
        assert stochastic, f"{arm} on {model} built a network without its layers"
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))
    else:
        assert not stochastic
    if arm == "alpha_dropout":
        assert any(isinstance(m, torch.nn.SELU) for m in net.modules())


# one model per arm where it applies (the cheapest)
WHERE = {arm: ("resmlp" if arm == "drop_path" else "cnn1d" if arm in ("spatial_dropout", "dropblock") else "mlp")
         for arm in ARMS}


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_trains_and_writes_a_valid_record(arm, tmp_path):
    r = train_in_process(tmp_path, f"regularizer={arm}", f"model={WHERE[arm]}", "trainer.max_epochs=2",
                         "trainer.progress_every=0")
    assert r["status"] in STATUSES and r["status"] == "ok"
    assert r["epochs_trained"] >= 1 and all(math.isfinite(v) for v in r["metrics"].values())
    if arm == "mc_dropout":
        assert r["extra"]["mc_entropy_test"] > 0
