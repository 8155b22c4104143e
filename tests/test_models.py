"""Classifiers: shapes, parameter counts, slots and input-compatibility refusals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("regbench") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytest
import torch
from torch import nn

from regbench.models import MODELS, IncompatibleInputError, SlotError, Slots, build_model

# input shape (without batch dim) of every dataset, resized variants included
DATA_SHAPES = {
    "mnist1d": (40,),
    "mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
    "mnist5k_resized": (1, 14, 14),
    "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
}
KWARGS = {"mlp": {"hidden": 100, "depth": 2}}
COMPATIBLE = {
    "mlp": set(DATA_SHAPES), "logreg": set(DATA_SHAPES),
    "cnn1d": {"mnist1d"},
    "seed_cnn": {"mnist5k_resized"},
}
DROPOUT_LIKE = (nn.modules.dropout._DropoutNd,)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_out * (c_in * k) + c_out  # k = kernel elements


def fc(n_in: int, n_out: int) -> int:
    return n_out * n_in + n_out


def build(name: str, shape, slots: Slots | None = None, data: str = "?", **kw):
    return build_model(name, shape, 10, slots or Slots(), data_name=data, **{**KWARGS.get(name, {}), **kw})


def test_registry():
    assert set(MODELS) == {"mlp", "resmlp", "logreg", "cnn1d", "seed_cnn"}
    with pytest.raises(KeyError, match="unknown model='resnet'"):
        build("resnet", (40,))


@pytest.mark.parametrize("model", sorted(COMPATIBLE))
@pytest.mark.parametrize("data", sorted(DATA_SHAPES))
def test_forward_or_refusal(model, data):
    shape = DATA_SHAPES[data]
    if data in COMPATIBLE[model]:
        torch.manual_seed(0)
        m = build(model, shape, data=data)
        out = m(torch.randn(3, *shape))
        assert out.shape == (3, 10) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in m.parameters())
    else:
        with pytest.raises(IncompatibleInputError, match=rf"^model={model} needs .*; data={data} gives "
                                                         rf"\({', '.join(map(str, shape))},?\)"):
            build(model, shape, data=data)


def test_refusal_messages():
    with pytest.raises(IncompatibleInputError) as err:
        build("seed_cnn", (1, 28, 28), data="mnist5k")
    assert str(err.value) == ("model=seed_cnn needs inputs of shape (1, 14, 14); data=mnist5k gives (1, 28, 28) "
                              "— set data.resize=[14,14]")
    with pytest.raises(IncompatibleInputError, match=r"data=cifar10 gives \(3, 32, 32\) .*3 channels"):
        build("seed_cnn", (3, 32, 32), data="cifar10")
    with pytest.raises(IncompatibleInputError, match=r"model=cnn1d needs 1-D signals .*data=digits gives "
                                                     r"\(1, 8, 8\) — use a 1-D dataset such as data=mnist1d"):
        build("cnn1d", (1, 8, 8), data="digits")


def test_seed_cnn_parameter_count_matches_the_document():
    expected = (conv(1, 32, 9) + conv(32, 64, 9) + conv(64, 128, 9)
                + fc(128 * 8 * 8, 256) + fc(256, 10))
    assert expected == 2_192_650
    assert n_params(build("seed_cnn", (1, 14, 14))) == expected


def test_cnn1d_parameter_count_matches_the_reference():
    # ConvBase: Conv1d(1,25,5) Conv1d(25,25,3) Conv1d(25,25,3), Linear(125,10); lengths 40 -> 19 -> 10 -> 5
    expected = conv(1, 25, 5) + conv(25, 25, 3) + conv(25, 25, 3) + fc(25 * 5, 10)
    assert expected == 5_210
    m = build("cnn1d", (40,))
    assert n_params(m) == expected and m.head.in_features == 125


def test_other_parameter_counts():
    assert n_params(build("mlp", (40,))) == fc(40, 100) + fc(100, 100) + fc(100, 10) == 15_210
    assert n_params(build("logreg", (1, 28, 28))) == fc(784, 10) == 7_850


@pytest.mark.parametrize("model", sorted(COMPATIBLE))
def test_default_slots_have_no_dropout(model):
    shape = DATA_SHAPES[sorted(COMPATIBLE[model])[0]]
    m = build(model, shape)
    assert not [mod for mod in m.modules() if isinstance(mod, DROPOUT_LIKE) or "drop" in type(mod).__name__.lower()]


class MarkLinear(nn.Linear):
    pass


def filled_slots(used: set[str]) -> Slots:
    return Slots(input=lambda: nn.Dropout(0.1), hidden=lambda where="fc": nn.Dropout(0.2 if where == "fc" else 0.25),
                 conv=lambda c, d: nn.Dropout1d(0.3) if d == 1 else nn.Dropout2d(0.3),
                 linear=MarkLinear, activation=nn.SELU, used=used)


def count(m: nn.Module, cls) -> int:
    return sum(type(mod) is cls for mod in m.modules())


def test_slots_land_where_documented():
    s = build("seed_cnn", (1, 14, 14), filled_slots({"input", "hidden", "conv", "linear", "activation"}))
    assert count(s, nn.Dropout) == 1 + 3 + 1  # input, after each conv block, after fc1
    assert [m.p for m in s.modules() if type(m) is nn.Dropout] == [0.1, 0.25, 0.25, 0.25, 0.2]  # conv maps: own rate
    assert count(s, nn.Dropout2d) == 3 and count(s, nn.SELU) == 4 and count(s, MarkLinear) == 1
    assert isinstance(s.fc1, MarkLinear) and type(s.fc2) is nn.Linear  # the head is never swapped
    assert s(torch.randn(2, 1, 14, 14)).shape == (2, 10)

    c = build("cnn1d", (40,), filled_slots({"input", "hidden", "conv", "activation"}))
    assert count(c, nn.Dropout) == 1 + 3 and count(c, nn.Dropout1d) == 3 and count(c, nn.SELU) == 3
    assert c(torch.randn(2, 40)).shape == (2, 10)

    p = build("mlp", (40,), filled_slots({"input", "hidden", "linear", "activation"}))
    assert count(p, nn.Dropout) == 1 + 2 and count(p, MarkLinear) == 2 and count(p, nn.SELU) == 2

    lr = build("logreg", (40,), filled_slots({"input"}))
    assert count(lr, nn.Dropout) == 1 and count(lr, MarkLinear) == 0


@pytest.mark.parametrize("model,slot", [("mlp", "conv"), ("logreg", "hidden"), ("logreg", "linear"),
                                        ("cnn1d", "linear"), ("seed_cnn", "residual"), ("cnn1d", "residual")])
def test_slot_refusal(model, slot):
    shape = DATA_SHAPES[sorted(COMPATIBLE[model])[0]]
    with pytest.raises(SlotError, match=rf"regularizer=reg_x needs the slot\(s\) \['{slot}'\] which "
                                        rf"model={model} does not have"):
        build_model(model, shape, 10, Slots(used={slot}), regularizer="reg_x", **KWARGS.get(model, {}))


def test_declared_slots():
    assert MODELS["logreg"].SLOTS == {"input"}
    assert MODELS["mlp"].SLOTS == {"input", "hidden", "linear", "activation"}
    assert MODELS["cnn1d"].SLOTS == {"input", "hidden", "conv", "activation"}
    assert MODELS["seed_cnn"].SLOTS == {"input", "hidden", "conv", "linear", "activation"}
    assert MODELS["resmlp"].SLOTS == {"input", "hidden", "linear", "activation", "residual"}
    assert [name for name, cls in MODELS.items() if "residual" in cls.SLOTS] == ["resmlp"]


def test_mlp_validation():
    for bad in ({"hidden": 0, "depth": 2}, {"hidden": 100, "depth": 0}, {"hidden": 1.5, "depth": 2}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            build_model("mlp", (40,), 10, Slots(), **bad)
