"""Stacked mode of the dropout-family layers: S replicas under ``vmap(functional_call)``.

What the population engine does, done here on the layers alone: build S instances of a
layer with different rates, ``set_stacked(True)``, stack them with
``torch.func.stack_module_state`` and run
``vmap(lambda params, buffers, x: functional_call(base, (params, buffers), (x,)),
randomness="different")``. Each replica must then behave like a separate layer with ITS
OWN rate: drop fraction, mean, variance and structure (whole channels, samples, blocks,
weights), with noise independent of the other replicas', the identity in eval mode,
stochastic with ``mc``, and gradients that reach each replica's own input and weights only.

Conventions as in ``test_layers.py``: seeded (autouse fixture); every statistical check
compares an estimate with its standard error at a family-wise false-alarm rate ALPHA
(Bonferroni over the replicas and quantities checked together); ``*_mutant`` tests run a
check on deliberately broken noise and require it to fail.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from regbench.regularizers import layers as L
from regbench.regularizers.layers import (
    AlphaDropout,
    DropBlock,
    DropConnectLinear,
    DropPath,
    Dropout,
    GaussianDropout,
    SpatialDropout,
    alpha_dropout,
    drop_block_gamma,
    set_drop_rate,
    set_stacked,
)

from test_layers import ALPHA, _seeded, drop_probabilities, opening, z_crit  # noqa: E402,F401 (the same level,
# seeding fixture, critical values and DropBlock geometry as the single-run layer tests)

RATES = (0.1, 0.3, 0.5, 0.7)  # one per replica; every kind takes them (all < 1)
SELU_SATURATION = -1.0507009873554805 * 1.6732632423543772  # -lambda * alpha, written out again here


def f32(p: float) -> float:
    """The rate a replica really uses: its buffer is float32."""
    return float(torch.tensor(p, dtype=torch.float32))


class Population:
    """S stacked replicas of one layer kind run as one vmapped functional call.

    ``shared=True`` feeds one input to every replica (in_dims None), otherwise x is [S, ...].
    The replicas' modes (train/eval, mc) are read when the population is built: the base
    module that functional_call runs is a copy of replica 0 on the meta device.
    """

    def __init__(self, layers: list[nn.Module], *, shared: bool = True, randomness: str = "different"):
        for layer in layers:
            assert set_stacked(layer, True) == 1
        self.layers = layers
        self.params, self.buffers = stack_module_state(layers)
        base = copy.deepcopy(layers[0]).to("meta")

        def call(params, buffers, x):
            return functional_call(base, (params, buffers), (x,))

        self._run = vmap(call, in_dims=(0, 0, None if shared else 0), randomness=randomness)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.params, self.buffers, x)


def reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What one replica computes when it drops nothing: x, its full linear."""
    with torch.no_grad():
        if isinstance(layer, DropConnectLinear):
            return F.linear(x, layer.weight, layer.bias)
        return x


def assert_reference(y: torch.Tensor, layer: nn.Module, x: torch.Tensor) -> None:
    """y is what the replica computes without noise: exactly x, or its linear map up to rounding
    (a batched matmul under vmap need not round like the plain one)."""
    if isinstance(layer, DropConnectLinear):
        torch.testing.assert_close(y, reference(layer, x))
    else:
        assert torch.equal(y, x)


# --------------------------------------------------------------------------------------
# the kinds under test
# --------------------------------------------------------------------------------------

# name -> (factory(p), small input shape): every kind, for the generic checks
KINDS = {
    "Dropout": (lambda p: Dropout(p), (8, 16)),
    "GaussianDropout": (lambda p: GaussianDropout(p), (8, 16)),
    "AlphaDropout": (lambda p: AlphaDropout(p), (8, 16)),
    "DropConnectLinear": (lambda p: DropConnectLinear(16, 12, p=p), (8, 16)),
    "SpatialDropout": (lambda p: SpatialDropout(p), (4, 6, 5, 5)),
    "DropBlock1d": (lambda p: DropBlock(p, block_size=3), (4, 6, 20)),
    "DropBlock2d": (lambda p: DropBlock(p, block_size=3), (4, 6, 9, 9)),
    "DropPath": (lambda p: DropPath(p), (8, 4, 5)),
}


def eye_input(n: int) -> torch.Tensor:
    """Two copies of the identity: row k of x W^T is column k of W, twice (same mask?)."""
    return torch.cat([torch.eye(n), torch.eye(n)])


# Bernoulli kinds: name -> (factory(p), input(), units(y_i, x) -> [n] independent values whose
# zeros are the drops, structure(y_i) -> None, asserting what a whole dropped unit is)
def _same_along(y: torch.Tensor, dims: tuple[int, ...]) -> None:
    first = y
    for d in dims:
        first = first.narrow(d, 0, 1)
    assert torch.equal(y != 0, (first != 0).expand_as(y)), f"drops are not whole units along dims {dims}"


BERNOULLI = {
    "Dropout": (lambda p: Dropout(p), lambda: torch.rand(200, 100) + 0.5,
                lambda y: y.flatten(), lambda y: None),
    "SpatialDropout": (lambda p: SpatialDropout(p), lambda: torch.rand(400, 25, 2, 2) + 0.5,
                       lambda y: y[:, :, 0, 0].flatten(), lambda y: _same_along(y, (2, 3))),
    "DropPath": (lambda p: DropPath(p), lambda: torch.rand(10000, 3) + 0.5,
                 lambda y: y[:, 0], lambda y: _same_along(y, (1,))),
    # with x = [I; I] and no bias, y[k, o] = W[o, k] M[o, k] / (1 - p): the mask, seen twice
    "DropConnectLinear": (lambda p: DropConnectLinear(100, 100, p=p, bias=False), lambda: eye_input(100),
                          lambda y: y[:100].flatten(),
                          lambda y: _same_along(y.view(2, 100, 100), (0,))),
}


# --------------------------------------------------------------------------------------
# the buffer and the switch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KINDS)
def test_rate_buffer_follows_p_and_is_not_saved(name):
    make, _ = KINDS[name]
    layer = make(0.3)
    assert layer.rate.dim() == 0 and layer.rate.dtype == torch.float32
    assert layer.rate.item() == f32(0.3)
    layer.p = 0.1
    assert layer.rate.item() == f32(0.1)
    set_drop_rate(layer, 0.2)
    assert layer.rate.item() == f32(0.2)
    with pytest.raises(ValueError, match=r"\.p="):
        layer.p = 1.5
    assert layer.rate.item() == f32(0.2)  # a refused rate changes neither
    # a buffer (so stack_module_state and .to() carry it), but not saved: checkpoints keep their keys
    assert "rate" in dict(layer.named_buffers())
    state = layer.state_dict()
    assert not any(k.endswith("rate") for k in state)
    fresh = make(0.5)
    fresh.load_state_dict(state, strict=True)  # an old checkpoint (no rate) loads strictly
    assert fresh.p == 0.5 and fresh.rate.item() == 0.5  # and leaves the layer's own rate alone
    clone = copy.deepcopy(layer)
    clone.p = 0.4
    assert clone.rate.item() == f32(0.4) and layer.rate.item() == f32(0.2)  # not shared
    assert layer.to("meta").rate.device.type == "meta"


def test_dropconnect_registers_its_rate_with_the_linear_layer_and_keeps_it_on_its_device():
    layer = DropConnectLinear(4, 3, p=0.25, device="meta")
    assert layer.rate.device.type == "meta" and layer.weight.device.type == "meta"
    layer = DropConnectLinear(4, 3, p=0.25)
    assert [n for n, _ in layer.named_buffers()] == ["rate"] and layer.rate.item() == 0.25
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_set_stacked_switches_every_layer_and_counts_them():
    model = nn.Sequential(Dropout(0.1), nn.Linear(4, 4), DropPath(0.2), nn.Dropout(0.3))
    assert set_stacked(model, True) == 2  # torch.nn.Dropout is not one of ours
    assert model[0].stacked and model[2].stacked and "stacked=True" in repr(model)
    assert set_stacked(model, False) == 2
    assert not model[0].stacked and "stacked" not in repr(model)


def test_unstacked_layers_keep_the_packed_bits_path(monkeypatch):
    """stacked=False (the default) is the single-run fast path: packed random bits, not rand."""
    calls = []
    real = L._noise
    monkeypatch.setattr(L, "_noise", lambda *a: calls.append(a) or real(*a))
    layer = Dropout(0.3)
    x = torch.ones(10, 10)
    layer(x)
    assert len(calls) == 1
    set_stacked(layer, True)
    y = layer(x)  # stacked outside vmap works too, drawing uniforms instead
    assert len(calls) == 1
    values = y.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / (1 - 0.3), rel=1e-6)


def test_unstacked_layers_cannot_run_under_vmap_which_is_why_stacked_mode_exists():
    layers = [Dropout(p) for p in RATES]
    params, buffers = stack_module_state(layers)
    base = copy.deepcopy(layers[0]).to("meta")
    run = vmap(lambda pa, bu, x: functional_call(base, (pa, bu), (x,)), in_dims=(0, 0, None), randomness="different")
    with pytest.raises(RuntimeError, match="randomness"):
        run(params, buffers, torch.ones(4, 4))


# --------------------------------------------------------------------------------------
# Bernoulli kinds: own drop rate, scale, structure, extremes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BERNOULLI)
def test_each_replica_drops_at_its_own_rate_and_scales_by_its_own_1_over_1_minus_p(name):
    make, make_x, units, structure = BERNOULLI[name]
    layers = [make(p) for p in RATES]
    x = make_x()
    y = Population(layers)(x)
    assert y.shape == (len(RATES), *reference(layers[0], x).shape)
    for i, (layer, p) in enumerate(zip(layers, RATES)):
        u = units(y[i])
        n, k = u.numel(), int((u == 0).sum())
        z = (k / n - p) / math.sqrt(p * (1 - p) / n)
        assert abs(z) < z_crit(len(RATES)), f"replica {i} (p={p}): dropped {k}/{n} = {k / n:.4f} ({z:.1f} SE)"
        ref = reference(layer, x)
        kept = y[i] != 0
        torch.testing.assert_close(y[i][kept], ref[kept] / (1 - f32(p)))
        structure(y[i].detach())


@pytest.mark.parametrize("name", BERNOULLI)
def test_rate_0_is_the_identity_and_rate_1_gives_zeros_not_nan(name):
    make, make_x, _, _ = BERNOULLI[name]
    layers = [make(0.0), make(1.0), make(0.5)]
    x = make_x()
    y = Population(layers)(x)
    assert torch.isfinite(y).all()
    assert_reference(y[0], layers[0], x)
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    assert (y[2] == 0).any() and (y[2] != 0).any()


def test_drop_rate_check_catches_a_replica_using_another_replicas_rate_mutant():
    """The per-replica rate check must fail if every replica used replica 0's rate."""
    layers = [Dropout(RATES[0]) for _ in RATES]  # what a layer reading the base's float p would do
    y = Population(layers)(torch.ones(200, 100))
    frac = (y[-1] == 0).double().mean().item()
    n = y[-1].numel()
    z = (frac - RATES[-1]) / math.sqrt(RATES[-1] * (1 - RATES[-1]) / n)
    assert abs(z) > z_crit(len(RATES))


# --------------------------------------------------------------------------------------
# Gaussian and alpha dropout
# --------------------------------------------------------------------------------------


def test_gaussian_replicas_have_their_own_variance_p_over_1_minus_p():
    layers = [GaussianDropout(p) for p in RATES]
    x = torch.rand(100_000) + 0.5
    y = Population(layers)(x)
    k = 3 * len(RATES)  # mean, variance, shape, per replica
    for i, p in enumerate(RATES):
        m = (y[i] / x).double()
        n = m.numel()
        var = f32(p) / (1 - f32(p))
        z_mean = (m.mean().item() - 1) / math.sqrt(var / n)
        z_var = (m.var().item() - var) / (var * math.sqrt(2 / (n - 1)))  # SE of a normal sample variance
        assert abs(z_mean) < z_crit(k), f"replica {i}: mean of noise {m.mean():.4f} ({z_mean:.1f} SE)"
        assert abs(z_var) < z_crit(k), f"replica {i}: var {m.var():.4f} vs {var:.4f} ({z_var:.1f} SE)"
        ks = stats.kstest(m.numpy(), "norm", args=(1.0, math.sqrt(var)))
        assert ks.pvalue > ALPHA / k, f"replica {i}: noise is not N(1, {var:.3f}) (KS p={ks.pvalue:.2g})"


def test_alpha_dropout_replicas_keep_selu_moments_and_drop_at_their_own_rate():
    """For z ~ N(0, 1), selu(z) has mean 0 and variance 1; every replica must keep both.

    SEs from the sample (the output is not Gaussian): SE(mean) = s / sqrt(n),
    SE(var) = sqrt((m4 - s^4) / n). Dropped units all take the value a alpha' + b.
    """
    layers = [AlphaDropout(p) for p in RATES]
    n = 200_000
    h = torch.selu(torch.randn(n))
    y = Population(layers)(h).double()
    k = 3 * len(RATES)
    for i, p in enumerate(RATES):
        p32 = f32(p)
        a = ((1 - p32) * (1 + p32 * SELU_SATURATION**2)) ** -0.5
        b = -a * p32 * SELU_SATURATION
        dropped = (y[i] - (a * SELU_SATURATION + b)).abs() < 1e-5
        torch.testing.assert_close(y[i][~dropped], a * h.double()[~dropped] + b, rtol=1e-6, atol=1e-6)  # float32
        frac = dropped.double().mean().item()
        z = (frac - p) / math.sqrt(p * (1 - p) / n)
        assert abs(z) < z_crit(k), f"replica {i} (p={p}): dropped {frac:.4f} ({z:.1f} SE)"
        mean, var = y[i].mean().item(), y[i].var().item()
        m4 = ((y[i] - mean) ** 4).mean().item()
        assert abs(mean / math.sqrt(var / n)) < z_crit(k), f"replica {i}: mean {mean:.4f}"
        assert abs((var - 1) / math.sqrt((m4 - var**2) / n)) < z_crit(k), f"replica {i}: var {var:.4f}"


def test_alpha_dropout_tensor_rate_is_torchs_alpha_dropout_formula():
    """The tensor-p path and F.alpha_dropout (the float path) map kept and dropped units alike."""
    x = torch.randn(5000)
    p = 0.3
    for y in (F.alpha_dropout(x, p, True), alpha_dropout(x, torch.tensor(p), True)):
        a = ((1 - p) * (1 + p * SELU_SATURATION**2)) ** -0.5
        b = -a * p * SELU_SATURATION
        dropped = (y - (a * SELU_SATURATION + b)).abs() < 1e-5
        assert 0 < int(dropped.sum()) < x.numel()
        torch.testing.assert_close(y[~dropped], a * x[~dropped] + b)


# --------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------


def test_drop_block_gamma_takes_a_tensor_rate():
    for p in RATES:
        g = drop_block_gamma(torch.tensor(p, dtype=torch.float64), (16, 16), 3)
        assert isinstance(g, torch.Tensor) and g.item() == pytest.approx(drop_block_gamma(p, (16, 16), 3), rel=1e-12)


@pytest.mark.parametrize("spatial,b", [((64,), 5), ((16, 16), 3)])
def test_drop_block_replicas_drop_blocks_at_their_own_rate_and_rescale_by_their_own_kept_fraction(spatial, b):
    layers = [DropBlock(p, block_size=b) for p in RATES]
    y = Population(layers)(torch.ones(2000, 1, *spatial))
    for i, p in enumerate(RATES):
        dropped = (y[i] == 0).flatten(0, 1)
        assert torch.equal(opening(dropped, b), dropped), f"replica {i}: zeros that are not whole blocks"
        frac = dropped.flatten(1).double().mean(1)  # one independent map per row
        expected = float(drop_probabilities(f32(p), spatial, b).mean())
        z = (frac.mean().item() - expected) / (frac.std().item() / math.sqrt(len(frac)))
        assert abs(z) < z_crit(len(RATES)), f"replica {i} (p={p}): dropped {frac.mean():.4f}, expected {expected:.4f}"
        kept = int((y[i] != 0).sum())
        torch.testing.assert_close(y[i][y[i] != 0], torch.full((kept,), y[i].numel() / kept))


def test_drop_block_replicas_preserve_their_own_expectation():
    """E[y_j] = x_j (1 - P_j) / (1 - mean P) per replica (the kept-fraction rescale; see test_layers)."""
    b, draws = 5, 1500
    x = torch.rand(2, 4, 32) + 0.5
    pop = Population([DropBlock(p, block_size=b) for p in RATES])
    ys = torch.stack([pop(x) for _ in range(draws)]).double()  # [R, S, ...]
    k = len(RATES) * x.numel()
    for i, p in enumerate(RATES):
        pj = drop_probabilities(f32(p), (32,), b)
        expect = x.double() * (1 - pj) / (1 - pj.mean())
        z = (ys[:, i].mean(0) - expect) / (ys[:, i].std(0) / math.sqrt(draws))
        assert z.abs().max().item() < z_crit(k), f"replica {i} (p={p}): max |z| {z.abs().max():.1f}"


# --------------------------------------------------------------------------------------
# every kind: the mean, independence, modes, gradients
# --------------------------------------------------------------------------------------

MEAN_PRESERVING = [name for name in KINDS if name not in ("AlphaDropout", "DropBlock1d", "DropBlock2d")]


def assert_mean_preserved(ys: torch.Tensor, refs: list[torch.Tensor], what: str) -> None:
    """ys [R, S, ...] draws; each replica's per-element mean must be its reference, within SE."""
    ys = ys.double()
    r = ys.shape[0]
    k = ys[0].numel()
    for i, ref in enumerate(refs):
        z = (ys[:, i].mean(0) - ref.double()) / (ys[:, i].std(0) / math.sqrt(r))
        worst = z.abs().max().item()
        assert worst < z_crit(k), f"{what}, replica {i}: max |mean - ref| / SE = {worst:.1f}"


@pytest.mark.parametrize("name", MEAN_PRESERVING)
def test_each_replica_preserves_the_mean(name):
    make, shape = KINDS[name]
    layers = [make(p) for p in RATES]
    x = torch.rand(shape) + 0.5
    pop = Population(layers)
    ys = torch.stack([pop(x).detach() for _ in range(1000)])
    assert_mean_preserved(ys, [reference(layer, x) for layer in layers], name)


def test_mean_check_catches_a_missing_rescale_mutant():
    layers = [Dropout(p) for p in RATES]
    x = torch.rand(8, 16) + 0.5
    pop = Population(layers)
    ys = torch.stack([pop(x) for _ in range(1000)])
    unscaled = (ys != 0) * x  # the mask without 1 / (1 - p)
    with pytest.raises(AssertionError):
        assert_mean_preserved(unscaled, [x] * len(RATES), "mutant")


def noise_of(name: str, y: torch.Tensor, x: torch.Tensor, layers) -> torch.Tensor:
    """[S, n] per replica: the independent units of its noise (drops, Gaussian factors, block fractions)."""
    if name == "GaussianDropout":
        return (y / x).flatten(1)
    if name.startswith("DropBlock"):  # units inside a map are not independent; maps are
        return (y == 0).flatten(2).double().mean(2)
    if name == "AlphaDropout":  # dropped units all take one value, the most frequent (kept ones vary with x)
        return torch.stack([(yi == yi.flatten().mode().values).flatten() for yi in y]).double()
    if name in BERNOULLI:
        return torch.stack([BERNOULLI[name][2](yi) == 0 for yi in y]).double()
    raise KeyError(name)


def assert_independent(noise: torch.Tensor, what: str) -> None:
    """Pearson r of every pair of replicas' noise: under independence r sqrt(n) ~ N(0, 1)."""
    s, n = noise.shape
    pairs = [(i, j) for i in range(s) for j in range(i + 1, s)]
    for i, j in pairs:
        r = torch.corrcoef(noise[[i, j]].double())[0, 1].item()
        assert abs(r) * math.sqrt(n) < z_crit(len(pairs)), f"{what}: replicas {i}, {j} correlate, r={r:.3f} (n={n})"


NOISE_INPUTS = {
    "Dropout": lambda: torch.rand(100, 100) + 0.5,
    "GaussianDropout": lambda: torch.rand(100, 100) + 0.5,
    "AlphaDropout": lambda: torch.selu(torch.randn(100, 100)),
    "SpatialDropout": BERNOULLI["SpatialDropout"][1],
    "DropPath": BERNOULLI["DropPath"][1],
    "DropConnectLinear": BERNOULLI["DropConnectLinear"][1],
    "DropBlock1d": lambda: torch.ones(2000, 1, 32),
    "DropBlock2d": lambda: torch.ones(2000, 1, 9, 9),
}
NOISE_LAYERS = {**{n: m for n, (m, *_) in BERNOULLI.items()}, "GaussianDropout": GaussianDropout,
                "AlphaDropout": AlphaDropout, "DropBlock1d": lambda p: DropBlock(p, block_size=3),
                "DropBlock2d": lambda p: DropBlock(p, block_size=3)}


@pytest.mark.parametrize("name", NOISE_INPUTS)
def test_replicas_noise_is_independent(name):
    """Same input, same rate (0.5) in every replica: only independent noise tells them apart."""
    layers = [NOISE_LAYERS[name](0.5) for _ in RATES]
    x = NOISE_INPUTS[name]()
    y = Population(layers)(x).detach()
    noise = noise_of(name, y, x, layers)
    assert not any(torch.equal(noise[0], noise[i]) for i in range(1, len(RATES)))
    assert_independent(noise, name)


def test_independence_check_catches_shared_noise_mutant():
    """randomness="same" gives every replica the same uniforms: the check must see it, also
    across different rates (nested masks)."""
    layers = [Dropout(p) for p in RATES]
    x = torch.ones(100, 100)
    y = Population(layers, randomness="same")(x)
    with pytest.raises(AssertionError, match="correlate"):
        assert_independent(noise_of("Dropout", y, x, layers), "mutant")


@pytest.mark.parametrize("name", KINDS)
def test_eval_is_the_identity_and_mc_keeps_every_replica_stochastic(name):
    make, shape = KINDS[name]
    x = torch.rand(shape) + 0.5
    layers = [make(p).eval() for p in RATES]
    y = Population(layers)(x)
    for i, layer in enumerate(layers):
        assert_reference(y[i], layer, x)
    for layer in layers:
        layer.mc = True
    pop = Population(layers)
    y1, y2 = pop(x), pop(x)
    for i, layer in enumerate(layers):
        assert not torch.equal(y1[i], reference(layer, x)), f"replica {i} does not sample with mc in eval"
        assert not torch.equal(y1[i], y2[i]), f"replica {i} draws the same noise twice"


# the gradient of sum(y_i) w.r.t. x_i for the kinds that multiply x by their noise
MULTIPLICATIVE = ["Dropout", "GaussianDropout", "SpatialDropout", "DropBlock1d", "DropBlock2d", "DropPath"]


@pytest.mark.parametrize("name", KINDS)
def test_gradients_reach_each_replicas_own_input_and_weights_only(name):
    make, shape = KINDS[name]
    layers = [make(p) for p in RATES]
    s = len(RATES)
    x = (torch.rand(s, *shape) + 0.5).requires_grad_()
    pop = Population(layers, shared=False)
    y = pop(x)
    y[0].sum().backward()
    assert x.grad[0].abs().sum() > 0
    assert torch.equal(x.grad[1:], torch.zeros_like(x.grad[1:])), "replica 0's loss reaches other replicas' inputs"
    for key, param in pop.params.items():
        assert param.shape == (s, *dict(layers[0].named_parameters())[key].shape)
        assert param.grad is not None and param.grad[0].abs().sum() > 0, key
        assert torch.equal(param.grad[1:], torch.zeros_like(param.grad[1:])), f"{key}: grad leaks across replicas"
    if name in MULTIPLICATIVE:  # dy/dx is the replica's own noise, y / x
        x.grad = None
        y = pop(x)
        y.sum().backward()
        torch.testing.assert_close(x.grad, (y / x).detach())
    if name == "AlphaDropout":  # dy/dx = a * keep
        x.grad = None
        y = pop(x)
        y.sum().backward()
        for i, p in enumerate(RATES):
            a = ((1 - f32(p)) * (1 + f32(p) * SELU_SATURATION**2)) ** -0.5
            g = x.grad[i]
            assert (((g - a).abs() < 1e-6) | (g == 0)).all() and 0 < int((g == 0).sum()) < g.numel()


def test_dropconnect_weight_gradient_is_each_replicas_own_mask():
    """With x = [I; I] and no bias, y[k, o] = W[o, k] M[o, k] / (1 - p), and d sum(y) / dW = 2 M / (1 - p)."""
    layers = [DropConnectLinear(30, 20, p=p, bias=False) for p in RATES]
    pop = Population(layers)
    y = pop(eye_input(30))
    y.sum().backward()
    grad = pop.params["weight"].grad
    assert grad.shape == (len(RATES), 20, 30)
    for i, (layer, p) in enumerate(zip(layers, RATES)):
        noise = y[i, :30].detach().T / layer.weight.detach()
        torch.testing.assert_close(grad[i], 2 * noise)
        assert set(torch.round(noise * (1 - f32(p)), decimals=4).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rates_follow_the_layers_to_cuda_and_a_population_runs_there():
    layers = [Dropout(p).to("cuda") for p in RATES]
    assert all(layer.rate.device.type == "cuda" for layer in layers)
    assert DropConnectLinear(4, 3, p=0.2, device="cuda").rate.device.type == "cuda"
    y = Population(layers)(torch.ones(200, 100, device="cuda"))
    n = y[0].numel()
    for i, p in enumerate(RATES):
        frac = (y[i] == 0).double().mean().item()
        assert abs(frac - p) / math.sqrt(p * (1 - p) / n) < z_crit(len(RATES)), f"replica {i}: dropped {frac:.4f}"


# --------------------------------------------------------------------------------------
# rows mode: a rate per input row, no vmap (a population folded into one batch)
# --------------------------------------------------------------------------------------

ROW_RATES = (0.0, 0.1, 0.3, 0.5, 1.0)  # 0.3 and 0.1 are not multiples of 1/256: 16-bit thresholds
ROW_KINDS = {"Dropout": (Dropout, lambda n: torch.rand(n, 100) + 0.5, lambda y: y.flatten()),
             "DropPath": (DropPath, lambda n: torch.rand(n, 3) + 0.5, lambda y: y[:, 0])}


def rows(layer: nn.Module, x: torch.Tensor, rates) -> torch.Tensor:
    """``layer`` in rows mode on ``x``: block s of rows (len(x) / len(rates) each) at rates[s]."""
    set_stacked(layer, True)
    per_row = torch.tensor(rates, dtype=torch.float32).repeat_interleave(len(x) // len(rates)).unsqueeze(1)
    layer._buffers["rate"] = per_row  # what engine/population.py binds
    return layer(x)


@pytest.mark.parametrize("name", ROW_KINDS)
def test_rows_mode_drops_each_block_at_the_realised_rate_a_separate_run_uses(name):
    make, make_x, units = ROW_KINDS[name]
    x = make_x(2000 * len(ROW_RATES))
    y = rows(make(0.5), x, ROW_RATES)
    assert torch.isfinite(y).all()
    blocks, xs = y.chunk(len(ROW_RATES)), x.chunk(len(ROW_RATES))
    assert torch.equal(blocks[0], xs[0]) and torch.equal(blocks[-1], torch.zeros_like(blocks[-1]))
    for p, yb, xb in zip(ROW_RATES[1:-1], blocks[1:-1], xs[1:-1]):
        q = L.realised_drop_rate(p)  # the single-run path's quantised rate
        u = units(yb)
        n, k = u.numel(), int((u == 0).sum())
        z = (k / n - q) / math.sqrt(q * (1 - q) / n)
        assert abs(z) < z_crit(3), f"p={p}: dropped {k}/{n} ({z:.1f} SE)"
        kept = yb != 0
        torch.testing.assert_close(yb[kept], xb[kept] / (1 - q), rtol=1e-6, atol=0)  # E[y] = x exactly


def test_rows_mode_rate_check_catches_every_row_using_the_first_rows_rate_mutant():
    y = rows(Dropout(0.5), torch.ones(4000, 100), (0.1, 0.1))  # block 2 should have been at 0.5
    frac = (y[2000:] == 0).double().mean().item()
    assert abs((frac - 0.5) / math.sqrt(0.25 / y[2000:].numel())) > z_crit(3)


def test_rows_mode_gaussian_and_alpha_blocks_have_their_own_rates():
    n = 100_000
    g = rows(GaussianDropout(0.5), torch.ones(2 * n, 1), (0.1, 0.5))
    for p, m in zip((0.1, 0.5), g.chunk(2)):
        var = f32(p) / (1 - f32(p))
        z = (m.double().var().item() - var) / (var * math.sqrt(2 / (n - 1)))
        assert abs(z) < z_crit(4), f"Gaussian p={p}: var {m.var():.4f} vs {var:.4f}"
    h = torch.selu(torch.randn(2 * n, 1))
    a = rows(AlphaDropout(0.5), h, (0.1, 0.5)).double()
    for p, yb, hb in zip((0.1, 0.5), a.chunk(2), h.chunk(2)):
        p32 = f32(p)
        scale = ((1 - p32) * (1 + p32 * SELU_SATURATION**2)) ** -0.5
        dropped = (yb - (scale * SELU_SATURATION - scale * p32 * SELU_SATURATION)).abs() < 1e-5
        frac = dropped.double().mean().item()
        assert abs((frac - p) / math.sqrt(p * (1 - p) / n)) < z_crit(4), f"alpha p={p}: dropped {frac:.4f}"


def test_only_layers_whose_math_broadcasts_a_row_rate_say_row_rates():
    assert {k for k, (make, _) in KINDS.items() if make(0.5).row_rates} == {
        "Dropout", "GaussianDropout", "AlphaDropout", "DropPath"}


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3, 0.1])  # 8-bit words (multiples of 1/256), then 16-bit ones
def test_rows_mode_block_at_one_rate_draws_the_single_run_mask_from_the_same_generator_state(p):
    # the separate run's mask (layers._noise) and rows mode's, drawn from one generator state, agree
    # element for element: the same bits per unit and the same threshold
    x = torch.rand(300, 100) + 0.5
    torch.manual_seed(7)
    single = Dropout(p)(x)
    torch.manual_seed(7)
    stacked = rows(Dropout(p), x, (p, p, p))
    assert torch.equal(stacked == 0, single == 0)
    torch.testing.assert_close(stacked, single, rtol=1e-6, atol=0)


def test_rows_mode_thresholds_follow_a_rate_changed_in_place():
    layer = Dropout(0.5)
    y = rows(layer, torch.ones(2000, 100), (0.5,))
    assert abs((y == 0).double().mean().item() - 0.5) < 0.01
    layer._buffers["rate"].fill_(0.1)   # the thresholds kept on the tensor must not be reused
    frac = (layer(torch.ones(2000, 100)) == 0).double().mean().item()
    assert abs(frac - L.realised_drop_rate(0.1)) < 0.01, frac
