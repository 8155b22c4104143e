"""Mechanism measurements (regbench.analysis.mechanism) on hand-built networks with known answers."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from regbench.analysis import expected_calibration_error, measure, predict_probs, predictive_entropy
from regbench.analysis.mechanism import mean_abs_correlation
from regbench.models import MODELS, Slots, build_model
from regbench.regularizers.layers import AlphaDropout, DropConnectLinear, Dropout

# a suitable input shape (without the batch dim) and the number of hidden activations, per model
MODEL_INPUTS = {
    "mlp": ((40,), {"hidden": 16, "depth": 2}, 2),
    "resmlp": ((40,), {"hidden": 16, "depth": 3}, 3),
    "logreg": ((40,), {}, 0),
    "cnn1d": ((40,), {}, 3),
    "seed_cnn": ((1, 14, 14), {}, 4),
}


def linear(weight, bias) -> nn.Linear:
    weight = torch.as_tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def labels(n: int, k: int = 2) -> torch.Tensor:
    return torch.arange(n) % k


# --------------------------------------------------------------------------------------
# hidden-layer statistics
# --------------------------------------------------------------------------------------


def test_duplicated_units_correlate_perfectly_and_dead_unit_is_excluded():
    # unit 0 = unit 1 = relu(x0) with x0 > 0 (never zero); unit 2 = relu(-1) = 0 always (dead)
    net = nn.Sequential(linear([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [0.0, 0.0, -1.0]), nn.ReLU(),
                        linear([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [0.0, 0.0]))
    x = torch.rand(200, 2) + 0.5
    m = measure(net, x, labels(200))
    (layer,) = m["layers"]
    assert layer["name"] == "1" and layer["activation"] == "ReLU" and layer["kind"] == "dense"
    assert layer["mean_abs_corr"] == pytest.approx(1.0, abs=1e-12)
    assert (layer["corr_units_used"], layer["corr_units_excluded"]) == (2, 1)
    assert layer["sparsity"] == pytest.approx(1 / 3) and layer["dead_units"] == 1
    assert layer["feeding_layer"] == "0" and layer["feeding_direct"] and layer["feeding_layer_type"] == "Linear"


def test_always_negative_preactivation_gives_sparsity_one():
    net = nn.Sequential(linear(torch.zeros(4, 3), -torch.ones(4)), nn.ReLU(), nn.Linear(4, 2))
    (layer,) = measure(net, torch.randn(50, 3), labels(50))["layers"]
    assert layer["sparsity"] == 1.0 and layer["dead_units"] == 4
    assert layer["mean_abs_corr"] is None and layer["corr_units_excluded"] == 4


def test_correlation_matches_numpy_and_sparsity_counts_zeros():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 3, generator=g) + 0.1          # positive: relu is the identity on units 0..2
    x[:, 2] = x[:, 0] * 0.5 + x[:, 1]                   # a third, partly correlated input
    x = torch.cat([x, -torch.rand(300, 1, generator=g)], 1)  # unit 3: relu(negative) = 0
    x[::3, 3] = 1.0                                     # ... except on every third example
    net = nn.Sequential(linear(torch.eye(4), torch.zeros(4)), nn.ReLU(), nn.Linear(4, 2))
    (layer,) = measure(net, x, labels(300), chunk=64)["layers"]
    h = torch.relu(x).double().numpy()
    r = np.abs(np.corrcoef(h.T))[np.triu_indices(4, 1)].mean()
    assert layer["mean_abs_corr"] == pytest.approx(r, abs=1e-6)
    assert layer["sparsity"] == pytest.approx(200 / 1200) and layer["dead_units"] == 0


def test_selu_sparsity_is_fraction_nonpositive():
    steps = torch.arange(1, 51) / 50.0
    x = torch.cat([-steps, torch.zeros(1), steps]).reshape(-1, 1)  # 51 values <= 0 (0 included), 50 > 0
    net = nn.Sequential(linear([[1.0]], [0.0]), nn.SELU(), nn.Linear(1, 2))
    (layer,) = measure(net, x, labels(101))["layers"]
    assert layer["activation"] == "SELU" and "SELU" in layer["sparsity_rule"]
    assert layer["sparsity"] == pytest.approx(51 / 101)
    assert layer["mean_abs_corr"] is None and layer["corr_units_used"] == 1  # one unit: no pairs


def test_conv_channels_are_correlated_after_spatial_averaging():
    conv = nn.Conv1d(1, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0]], [[2.0]], [[-1.0]]]))
        conv.bias.zero_()
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5, 2))
    x = torch.rand(40, 1, 5) + 0.1  # channel 1 = 2 x channel 0; channel 2 is always 0
    (layer,) = measure(net, x, labels(40))["layers"]
    assert layer["kind"] == "conv" and layer["shape"] == [3, 5] and layer["units"] == 3
    assert layer["corr_basis"].startswith("channels")
    assert layer["mean_abs_corr"] == pytest.approx(1.0, abs=1e-12)
    assert (layer["corr_units_used"], layer["corr_units_excluded"], layer["dead_units"]) == (2, 1, 1)
    assert layer["sparsity"] == pytest.approx(1 / 3)
    assert layer["weight_fro_norm"] == pytest.approx(math.sqrt(6))
    assert layer["unit_norm_mean"] == pytest.approx(4 / 3) and layer["unit_norm_max"] == pytest.approx(2.0)


def test_weight_norms_of_feeding_layer():
    net = nn.Sequential(linear([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], [0.0, 1.0, 0.0]), nn.ReLU(), nn.Linear(3, 2))
    (layer,) = measure(net, torch.randn(20, 2), labels(20))["layers"]
    assert layer["weight_fro_norm"] == pytest.approx(math.sqrt(26))
    assert layer["unit_norm_mean"] == pytest.approx(2.0) and layer["unit_norm_max"] == pytest.approx(5.0)


def test_mean_abs_correlation_edge_cases():
    assert mean_abs_correlation(torch.ones(1, 3)) == (None, 0, 3)
    v = torch.arange(10.0)
    assert mean_abs_correlation(torch.stack([v, -v], 1))[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# calibration and entropy
# --------------------------------------------------------------------------------------


def test_ece_perfectly_calibrated_is_zero():
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    y = torch.tensor([0] * 8 + [1] * 2)
    ece, bins = expected_calibration_error(probs, y)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert sum(bins["count"]) == 10 and len(bins["count"]) == 15


def test_ece_always_certain_half_right_is_half():
    probs = torch.tensor([[1.0, 0.0]] * 10, dtype=torch.float64)
    y = torch.tensor([0, 1] * 5)
    ece, bins = expected_calibration_error(probs, y)
    assert ece == pytest.approx(0.5)
    assert bins["count"][-1] == 10 and bins["accuracy"][-1] == 0.5 and bins["accuracy"][0] is None


def test_ece_hand_computed_two_bins():
    # 4 examples at confidence 0.9 (3 right), 6 at 0.55 (3 right):
    # ECE = 0.4 * |0.75 - 0.9| + 0.6 * |0.5 - 0.55| = 0.06 + 0.03
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 6, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1] + [0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probs, y)[0] == pytest.approx(0.09)


def test_entropy_of_uniform_is_log_k_and_of_one_hot_is_zero():
    assert predictive_entropy(torch.full((3, 4), 0.25)).tolist() == pytest.approx([math.log(4)] * 3)
    assert predictive_entropy(torch.eye(3)).tolist() == [0.0, 0.0, 0.0]


def test_given_probs_replace_the_softmax():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(10, 2), torch.tensor([0, 1] * 5)
    m = measure(net, x, y, probs=torch.tensor([[1.0, 0.0]] * 10))
    assert m["prediction"] == "given probabilities"
    assert m["ece"] == pytest.approx(0.5) and m["acc"] == 0.5 and m["entropy"] == 0.0
    assert m["layers"] == measure(net, x, y)["layers"]  # hidden statistics: the eval-mode pass either way
    with pytest.raises(ValueError, match="probs"):
        measure(net, x, y, probs=torch.ones(10, 2))


# --------------------------------------------------------------------------------------
# every model, state restored, determinism, MC dropout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_measured_and_json_serialisable(name):
    assert name in MODEL_INPUTS, f"add model {name} to MODEL_INPUTS"
    shape, kwargs, n_layers = MODEL_INPUTS[name]
    torch.manual_seed(0)
    net = build_model(name, shape, 10, Slots(), **kwargs)
    x, y = torch.randn(48, *shape), torch.randint(0, 10, (48,))
    m = measure(net, x, y, chunk=20)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert len(m["layers"]) == m["summary"]["layers"] == n_layers
    assert 0.0 <= m["ece"] <= 1.0 and 0.0 <= m["entropy"] <= math.log(10) + 1e-9
    for layer in m["layers"]:
        assert 0.0 <= layer["sparsity"] <= 1.0 and layer["feeding_direct"]
        assert layer["weight_fro_norm"] > 0
    if n_layers:
        assert m["summary"]["sparsity"] == pytest.approx(np.mean([e["sparsity"] for e in m["layers"]]))
    else:
        assert m["summary"]["sparsity"] is None and m["summary"]["mean_abs_corr"] is None


def test_deterministic_chunk_invariant_and_restores_state():
    torch.manual_seed(1)
    net = build_model("mlp", (40,), 10, Slots(hidden=lambda: Dropout(0.5), linear=partial(DropConnectLinear, p=0.5)),
                      hidden=16, depth=2)
    net.train()
    for layer in net.modules():
        if isinstance(layer, Dropout):
            layer.mc = True  # a network left in MC mode is still measured deterministically
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    a, b = measure(net, x, y, chunk=64), measure(net, x, y, chunk=64)
    assert a == b
    c = measure(net, x, y, chunk=10)
    for la, lc in zip(a["layers"], c["layers"]):
        assert la["sparsity"] == lc["sparsity"] and la["mean_abs_corr"] == pytest.approx(lc["mean_abs_corr"])
    assert a["ece"] == pytest.approx(c["ece"])
    assert a["layers"][0]["feeding_layer_type"] == "DropConnectLinear"
    assert net.training and all(m.mc for m in net.modules() if isinstance(m, Dropout))
    assert not any(m._forward_hooks for m in net.modules())


def test_alpha_dropout_network_uses_the_selu_rule():
    net = build_model("mlp", (40,), 10, Slots(hidden=lambda: AlphaDropout(0.1), activation=nn.SELU,
                                              used={"hidden", "activation"}), hidden=16, depth=2)
    m = measure(net, torch.randn(32, 40), torch.randint(0, 10, (32,)))
    assert [e["activation"] for e in m["layers"]] == ["SELU", "SELU"]
    assert all("SELU" in e["sparsity_rule"] for e in m["layers"])


def test_mc_probs_average_stochastic_passes():
    torch.manual_seed(2)
    net = build_model("mlp", (40,), 10, Slots(hidden=lambda: Dropout(0.5)), hidden=16, depth=2)
    x, y = torch.randn(30, 40), torch.randint(0, 10, (30,))
    plain = predict_probs(net, x, chunk=7)
    mc = predict_probs(net, x, chunk=7, mc_samples=8)
    assert plain.shape == mc.shape == (30, 10) and not torch.allclose(plain, mc)
    torch.testing.assert_close(mc.sum(1), torch.ones(30, dtype=torch.float64))
    assert not any(m.mc for m in net.modules() if isinstance(m, Dropout))
    m = measure(net, x, y, probs=mc)
    assert m["entropy"] == pytest.approx(float(predictive_entropy(mc).mean()))
    with pytest.raises(ValueError, match="no regbench dropout"):
        predict_probs(nn.Sequential(nn.Linear(40, 10)), x, mc_samples=2)
