"""Statistical and structural tests of the dropout-family layers (regbench.regularizers.layers).

Conventions:
* every test is seeded (autouse fixture), so a pass or a failure is reproducible;
* statistical checks compare an estimate with its standard error (or an exact binomial /
  chi-square interval) at a small false-alarm rate, ALPHA below, Bonferroni-corrected when
  many quantities are tested at once -- never a loose hand-picked tolerance;
* the ``*_mutant`` tests run the same checks on deliberately broken layers (no rescale,
  element-wise masks where blocks/channels/samples
  /weights should be dropped) and require the check to fail: a check that cannot fail
  proves nothing.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from regbench.models.mlp import MLP
from regbench.models.slots import Slots
from regbench.regularizers.layers import (
    AlphaDropout,
    DropBlock,
    DropConnectLinear,
    DropPath,
    Dropout,
    DropoutLayer,
    GaussianDropout,
    SpatialDropout,
    bernoulli_noise,
    drop_block,
    drop_block_gamma,
    drop_path,
    dropout,
    dropout_layers,
    gaussian_dropout,
    realised_drop_rate,
    set_drop_rate,
    set_mc_dropout,
    spatial_dropout,
)

ALPHA = 1e-4  # false-alarm probability of each statistical check (family-wise)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def z_crit(k: int = 1) -> float:
    """Two-sided normal critical value for k simultaneous tests at family-wise level ALPHA."""
    return float(stats.norm.ppf(1 - ALPHA / (2 * k)))


def assert_proportion(k: int, n: int, p: float, what: str) -> None:
    """p lies in the exact (Clopper-Pearson) 1-ALPHA confidence interval of k successes in n."""
    ci = stats.binomtest(k, n, p).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    assert ci.low <= p <= ci.high, f"{what}: {k}/{n} = {k / n:.5f}, {1 - ALPHA:.4%} CI [{ci.low:.5f}, {ci.high:.5f}] excludes {p}"


def assert_mean_preserved(draws: torch.Tensor, target: torch.Tensor, what: str) -> None:
    """draws[r, ...] are i.i.d. draws of a layer's output; each element's mean must match target.

    Each element is tested with its own standard error (sample sd / sqrt(R)), Bonferroni
    over the elements.
    """
    draws = draws.double()
    r = draws.shape[0]
    mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(r)
    z = (mean - target.double()) / se
    worst = z.abs().max().item()
    assert worst < z_crit(z.numel()), f"{what}: max |mean - target| / SE = {worst:.2f} over {z.numel()} elements"


def positive_input(*shape: int) -> torch.Tensor:
    # positive values so that a missing 1/(1-p) rescale cannot average out across elements
    return torch.rand(*shape) + 0.5


# --------------------------------------------------------------------------------------
# the layers under test, in one table
# --------------------------------------------------------------------------------------

# name -> (factory(p) -> layer, input shape, whether the layer maps x to x in the identity case)
LAYERS = {
    "Dropout": (lambda p: Dropout(p), (8, 16)),
    "GaussianDropout": (lambda p: GaussianDropout(p), (8, 16)),
    "AlphaDropout": (lambda p: AlphaDropout(p), (8, 16)),
    "SpatialDropout1d": (lambda p: SpatialDropout(p), (4, 6, 10)),
    "SpatialDropout2d": (lambda p: SpatialDropout(p), (4, 6, 5, 5)),
    "DropBlock1d": (lambda p: DropBlock(p, block_size=3), (4, 6, 20)),
    "DropBlock2d": (lambda p: DropBlock(p, block_size=3), (4, 6, 9, 9)),
    "DropPath": (lambda p: DropPath(p), (8, 4, 5)),
    "DropConnectLinear": (lambda p: DropConnectLinear(16, 12, p=p), (8, 16)),
}


def deterministic_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the layer computes when it does not drop: x, or the full linear."""
    if isinstance(layer, DropConnectLinear):
        return F.linear(x, layer.weight, layer.bias)
    return x


@pytest.mark.parametrize("name", LAYERS)
def test_is_a_dropout_layer_with_mutable_p(name):
    factory, _ = LAYERS[name]
    layer = factory(0.25)
    assert isinstance(layer, DropoutLayer)
    assert layer.p == 0.25 and layer.mc is False
    layer.p = 0.125
    assert layer.p == 0.125
    assert "p=0.125" in repr(layer)
    with pytest.raises(ValueError, match="p=1.5"):
        layer.p = 1.5
    with pytest.raises(ValueError, match="p=-0.1"):
        factory(-0.1)


@pytest.mark.parametrize("name", LAYERS)
def test_identity_at_p0_and_in_eval(name):
    factory, shape = LAYERS[name]
    x = torch.randn(shape)
    layer = factory(0.0).train()
    torch.testing.assert_close(layer(x), deterministic_reference(layer, x), rtol=0, atol=0)
    layer = factory(0.5).eval()
    torch.testing.assert_close(layer(x), deterministic_reference(layer, x), rtol=0, atol=0)
    # and it does drop in training, otherwise the identities above are vacuous
    layer.train()
    assert not torch.equal(layer(x), deterministic_reference(layer, x))


@pytest.mark.parametrize("name", LAYERS)
def test_mc_mode_is_stochastic_in_eval(name):
    factory, shape = LAYERS[name]
    x = torch.randn(shape)
    layer = factory(0.5).eval()
    layer.mc = True
    a, b = layer(x), layer(x)
    ref = deterministic_reference(layer, x)
    assert not torch.equal(a, ref) and not torch.equal(a, b)
    layer.mc = False
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_deterministic_under_manual_seed(name):
    factory, shape = LAYERS[name]
    layer = factory(0.3).train()
    x = torch.randn(shape)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    torch.manual_seed(8)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", [n for n in LAYERS if n not in ("DropConnectLinear", "AlphaDropout")])
def test_gradient_is_the_noise(name):
    """y = x * noise for these layers, so dy/dx = noise and x * grad == y, element by element."""
    factory, shape = LAYERS[name]
    layer = factory(0.4).train()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    assert (x.grad == 0).any() or name == "GaussianDropout"


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck_with_frozen_noise(name):
    factory, shape = LAYERS[name]
    # gradcheck perturbs every input element: keep the input small (the last dim of the
    # linear layers is their in_features)
    shape = (2,) + shape[1:] if len(shape) == 2 else (2, 2) + tuple(min(s, 6) for s in shape[2:])
    layer = factory(0.3).train().double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [q for q in layer.parameters()]

    def f(x, *params):
        torch.manual_seed(0)  # the same noise on every call, so finite differences are valid
        return layer(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_alpha_dropout_gradient_is_a_times_mask():
    """y = a (x m + alpha' (1 - m)) + b, so dy/dx is a on kept units and 0 on dropped ones."""
    p = 0.2
    alpha_prime = -1.0507009873554805 * 1.6732632423543772
    a = ((1 - p) * (1 + p * alpha_prime**2)) ** -0.5
    x = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    AlphaDropout(p).train()(x).sum().backward()
    kept = x.grad != 0
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], a))
    assert_proportion(int((~kept).sum()), kept.numel(), p, "alpha dropout drop rate")


# --------------------------------------------------------------------------------------
# Bernoulli dropout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.3, 1 / 3, 0.9])
def test_dropout_mean_preserved(p):
    x = positive_input(40)
    draws = Dropout(p)(x.expand(20000, 40))
    assert_mean_preserved(draws, x, f"Dropout(p={p})")


def test_dropout_mean_check_catches_missing_rescale_mutant():
    x = positive_input(40)
    draws = x.expand(20000, 40) * (torch.rand(20000, 40) >= 0.5)  # forgot the 1/(1-p)
    with pytest.raises(AssertionError):
        assert_mean_preserved(draws, x, "mutant")


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.3, 1 / 3, 0.9, 0.01])
def test_dropout_rate_and_values(p):
    n = 2_000_000
    y = Dropout(p)(torch.ones(n))
    dropped = int((y == 0).sum())
    assert_proportion(dropped, n, p, f"Dropout(p={p}) dropped fraction")
    kept = y[y != 0]
    q = 1 - realised_drop_rate(p)
    assert torch.all(kept == torch.tensor(1 / q, dtype=y.dtype)), "kept units are scaled by exactly 1/(1-p')"


def test_dropout_rate_is_not_8bit_quantised():
    """p=0.1 is not a multiple of 1/256: an 8-bit threshold would give 26/256 = 0.1016.

    With n = 4e6 the binomial SE is 1.5e-4, so the 8-bit rate sits ~10 SE away from the
    0.1 this test requires: the check can tell the two apart.
    """
    n = 4_000_000
    dropped = int((Dropout(0.1)(torch.ones(n)) == 0).sum())
    assert_proportion(dropped, n, 0.1, "Dropout(p=0.1)")
    ci = stats.binomtest(dropped, n).proportion_ci(1 - ALPHA)
    assert not ci.low <= 26 / 256 <= ci.high


@pytest.mark.parametrize("p", [i / 256 for i in (1, 64, 77, 128, 200, 255)])
def test_realised_rate_exact_for_multiples_of_1_over_256(p):
    assert realised_drop_rate(p) == p


def test_realised_rate_error_bounded():
    ps = [i / 1000 for i in range(1, 1000)] + [1e-7, 1 - 1e-7, 0.0, 1.0]
    err = max(abs(realised_drop_rate(p) - p) for p in ps)
    assert err <= 2**-16 < 1e-3


@pytest.mark.parametrize("shape", [(), (1,), (3, 5, 7), (2, 3, 1, 4, 5), (0, 4)])
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_dropout_any_shape(shape, p):
    x = torch.randn(shape)
    y = dropout(x, p, True)
    assert y.shape == x.shape
    q = 1 - realised_drop_rate(p)
    assert torch.all((y == 0) | torch.isclose(y, x / q))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dropout_keeps_dtype(dtype):
    x = torch.ones(1000, dtype=dtype)
    y = Dropout(0.5)(x)
    assert y.dtype == dtype
    assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_dropout_noncontiguous_input():
    x = torch.randn(30, 20).t()
    y = dropout(x, 0.5, True)
    assert torch.all((y == 0) | (y == 2 * x))


def test_dropout_p1_drops_everything_and_keeps_graph():
    x = torch.randn(5, requires_grad=True)
    y = dropout(x, 1.0, True)
    assert torch.equal(y, torch.zeros(5))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(5))


def test_bernoulli_noise_rejects_degenerate_p():
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            bernoulli_noise((3,), p)


@pytest.mark.parametrize("fn", [dropout, gaussian_dropout, spatial_dropout, drop_path, drop_block])
def test_functional_forms_reject_bad_p(fn):
    with pytest.raises(ValueError, match="p=1.5"):
        fn(torch.ones(2, 3, 8), 1.5, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dropout_cuda_same_semantics():
    for p in (0.5, 0.1):
        n = 2_000_000
        y = dropout(torch.ones(n, device="cuda"), p, True)
        assert y.device.type == "cuda"
        assert_proportion(int((y == 0).sum()), n, p, f"cuda p={p}")
        assert torch.all(y[y != 0] == 1 / (1 - realised_drop_rate(p)))
        torch.manual_seed(3)
        a = dropout(torch.ones(100, device="cuda"), p, True)
        torch.manual_seed(3)
        assert torch.equal(a, dropout(torch.ones(100, device="cuda"), p, True))


# --------------------------------------------------------------------------------------
# Gaussian dropout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_gaussian_dropout_noise_mean_and_variance(p):
    n = 400_000
    m = GaussianDropout(p)(torch.ones(n, dtype=torch.float64))  # the multiplicative noise itself
    var = p / (1 - p)
    z = (m.mean().item() - 1) / math.sqrt(var / n)
    assert abs(z) < z_crit(2), f"noise mean off by {z:.2f} SE"
    # (n - 1) s^2 / sigma^2 ~ chi-square(n - 1) for Gaussian noise
    stat = (n - 1) * m.var().item() / var
    lo, hi = stats.chi2.ppf([ALPHA / 4, 1 - ALPHA / 4], n - 1)
    assert lo < stat < hi, f"noise variance {m.var().item():.4f}, expected p/(1-p) = {var:.4f}"
    # a variance of p (a classic slip) would be far outside the interval
    assert not lo < (n - 1) * m.var().item() / p < hi


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_gaussian_dropout_mean_preserved(p):
    x = positive_input(30)
    assert_mean_preserved(GaussianDropout(p)(x.expand(20000, 30)), x, f"GaussianDropout(p={p})")


def test_gaussian_dropout_rejects_p1():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        GaussianDropout(1.0)


# --------------------------------------------------------------------------------------
# alpha dropout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_alpha_dropout_keeps_selu_moments(p):
    """For z ~ N(0, 1), selu(z) has mean 0 and variance 1; alpha dropout must keep both.

    The SEs are estimated from the sample (the output is not Gaussian): SE(mean) = s / sqrt(n),
    SE(var) = sqrt((m4 - s^4) / n). Plain dropout on the same input gives variance
    about 1 / (1 - p) and must fail the same check (negative control).
    """
    n = 1_000_000
    h = torch.selu(torch.randn(n, dtype=torch.float64))

    def moments_ok(y: torch.Tensor) -> bool:
        mean, var = y.mean().item(), y.var().item()
        m4 = ((y - mean) ** 4).mean().item()
        z_mean = mean / math.sqrt(var / n)
        z_var = (var - 1) / math.sqrt((m4 - var**2) / n)
        return abs(z_mean) < z_crit(2) and abs(z_var) < z_crit(2)

    assert moments_ok(AlphaDropout(p)(h))
    assert not moments_ok(Dropout(p)(h))


# --------------------------------------------------------------------------------------
# DropConnect
# --------------------------------------------------------------------------------------


def effective_weight(layer: DropConnectLinear, x: torch.Tensor) -> torch.Tensor:
    """Solve y - b = x W_eff^T for W_eff from ONE forward pass (least squares, batch > in)."""
    with torch.no_grad():
        y = layer(x) - layer.bias
    return torch.linalg.lstsq(x, y).solution.T


def assert_weights_dropped(layer: DropConnectLinear, x: torch.Tensor) -> torch.Tensor:
    """One forward pass is x (W * M)^T / (1 - p) + b for a {0, 1} mask M shared by the batch.

    With 64 samples and 8 inputs the system y - b = x W_eff^T is overdetermined: it has an
    exact solution only if every sample saw the same weights. M = W_eff (1 - p) / W must
    then be 0 or 1 entry by entry. Returns M.
    """
    layer.train()
    w_eff = effective_weight(layer, x)
    with torch.no_grad():
        mask = w_eff * (1 - realised_drop_rate(layer.p)) / layer.weight
    rounded = mask.round()
    assert torch.allclose(mask, rounded, atol=1e-6), "the batch is not explained by one weight mask"
    assert set(rounded.unique().tolist()) <= {0.0, 1.0}
    return rounded


def test_dropconnect_masks_weights_shared_by_the_batch():
    layer = DropConnectLinear(8, 6, p=0.5).double()
    x = torch.randn(64, 8, dtype=torch.float64)
    mask = assert_weights_dropped(layer, x)
    assert 0 < mask.sum() < mask.numel()


def test_dropconnect_check_catches_activation_dropout_mutant():
    class ActivationDropLinear(DropConnectLinear):  # drops outputs per sample instead of weights
        def forward(self, x):
            return dropout(F.linear(x, self.weight), self.p, self.training) + self.bias

    layer = ActivationDropLinear(8, 6, p=0.5).double()
    with pytest.raises(AssertionError):
        assert_weights_dropped(layer, torch.randn(64, 8, dtype=torch.float64))


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropconnect_weight_drop_rate(p):
    layer = DropConnectLinear(200, 100, p=p, bias=False).double()
    eye = torch.eye(200, dtype=torch.float64)
    with torch.no_grad():
        w_eff = layer(eye).T  # row i of eye picks column i of W_eff^T
    assert torch.all((w_eff == 0) | torch.isclose(w_eff, layer.weight / (1 - realised_drop_rate(p))))
    assert_proportion(int((w_eff == 0).sum()), w_eff.numel(), p, "DropConnect weight drop rate")


def test_dropconnect_new_mask_per_forward_and_mean():
    layer = DropConnectLinear(10, 4, p=0.5)
    x = torch.randn(1, 10)
    with torch.no_grad():
        draws = torch.cat([layer(x) for _ in range(3000)])
        target = F.linear(x, layer.weight, layer.bias)[0]
    assert not torch.equal(draws[0], draws[1])
    assert_mean_preserved(draws, target, "DropConnect E[y] = x W^T + b")


def test_dropconnect_fits_linear_slot_and_mlp():
    make = functools.partial(DropConnectLinear, p=0.5)
    layer = make(40, 100)
    assert isinstance(layer, nn.Linear) and layer.p == 0.5
    assert tuple(layer.weight.shape) == (100, 40)
    model = MLP((40,), 10, hidden=32, depth=2, slots=Slots(linear=make))
    assert set_drop_rate(model, 0.25) == 2
    out = model(torch.randn(5, 40))
    out.sum().backward()
    assert out.shape == (5, 10)
    assert "p=0.25" in repr(model)


# --------------------------------------------------------------------------------------
# spatial dropout, DropPath
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 32, 10), (64, 32, 4, 5)])
def test_spatial_dropout_drops_whole_channels(shape):
    p = 0.3
    y = SpatialDropout(p)(torch.ones(shape))
    per_map = y.flatten(2)
    all_zero = (per_map == 0).all(-1)
    all_kept = torch.isclose(per_map, torch.tensor(1 / (1 - realised_drop_rate(p)))).all(-1)
    assert torch.all(all_zero | all_kept), "a channel map is partly dropped"
    assert_proportion(int(all_zero.sum()), all_zero.numel(), p, "dropped channels")
    x = positive_input(*shape[1:])
    assert_mean_preserved(SpatialDropout(p)(x.expand(3000, *shape[1:])), x, "SpatialDropout")


def test_spatial_dropout_rejects_flat_input():
    with pytest.raises(ValueError, match="N, C"):
        SpatialDropout(0.5)(torch.ones(4, 5))


def test_drop_path_drops_whole_samples():
    p = 0.25
    y = DropPath(p)(torch.ones(4000, 3, 5))
    flat = y.flatten(1)
    dropped = (flat == 0).all(1)
    kept = (flat == 1 / (1 - p)).all(1)
    assert torch.all(dropped | kept), "a sample is partly dropped"
    assert_proportion(int(dropped.sum()), len(dropped), p, "dropped samples")
    x = positive_input(3, 5)
    assert_mean_preserved(DropPath(p)(x.expand(20000, 3, 5)), x, "DropPath")


def test_whole_unit_checks_catch_elementwise_mutant():
    y = dropout(torch.ones(200, 8, 5), 0.3, True)  # element-wise, not per channel / per sample
    flat = y.flatten(1)
    assert not torch.all((flat == 0).all(1) | (flat != 0).all(1))


def test_drop_path_on_residual_branch():
    branch = nn.Linear(6, 6)
    dp = DropPath(0.5)
    x = torch.randn(200, 6)
    y = x + dp(branch(x))
    skipped = (y == x).all(1)  # the residual block is the identity for dropped samples
    assert 0 < skipped.sum() < 200


# --------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------


def opening(dropped: torch.Tensor, b: int) -> torch.Tensor:
    """Morphological opening of a bool mask [M, L] or [M, H, W] with a b(xb) window.

    The opening is the union of all b-blocks that fit inside the mask; a mask equals its
    opening iff it is a union of b-blocks. Outside the map counts as kept, so a block that
    is cut by a border does not count as a block.
    """
    nd = dropped.dim() - 1
    pad = [b - 1] * (2 * nd)
    m = F.pad(dropped.float().unsqueeze(1), pad, value=0.0)
    pool = F.max_pool1d if nd == 1 else F.max_pool2d
    eroded = -pool(-m, b, stride=1)  # 1 where the whole window starting here is dropped
    dilated = pool(F.pad(eroded, [b - 1] * (2 * nd)), b, stride=1)  # union of those windows
    crop = [slice(None), 0] + [slice(b - 1, b - 1 + s) for s in dropped.shape[1:]]
    return dilated[tuple(crop)].bool()


def drop_probabilities(p: float, spatial: tuple[int, ...], b: int) -> torch.Tensor:
    """P(unit j dropped) under drop_block: 1 - (1 - gamma)^c(j), where
    c(j) = prod_d #{block starts i in [0, S_d - b]: i <= j_d <= i + b - 1}."""
    gamma = drop_block_gamma(p, spatial, b)
    counts = []
    for s in spatial:
        bd = min(b, s)
        j = torch.arange(s, dtype=torch.float64)
        counts.append(torch.clamp(j, max=s - bd) - torch.clamp(j - bd + 1, min=0) + 1)
    c = counts[0] if len(counts) == 1 else counts[0][:, None] * counts[1][None, :]
    return 1 - (1 - gamma) ** c


def expected_drop_fraction(p: float, spatial: tuple[int, ...], b: int) -> float:
    return float(drop_probabilities(p, spatial, b).mean())


@pytest.mark.parametrize("b", [3, 4, 5])
@pytest.mark.parametrize("spatial", [(48,), (16, 16), (12, 9)])
def test_drop_block_zero_pattern_is_made_of_blocks(spatial, b):
    y = DropBlock(0.15, block_size=b)(torch.ones(32, 4, *spatial))
    dropped = (y == 0).flatten(0, 1)
    assert dropped.any()
    assert torch.equal(opening(dropped, b), dropped), "zeros that are not part of any whole block"
    # in 1-D: every run of zeros (blocks are never cut by a border) spans at least b units
    if len(spatial) == 1:
        runs = _zero_runs(dropped)
        assert runs and min(length for _, length in runs) >= b
        assert any(length == b for _, length in runs)  # single blocks are the common case


def _zero_runs(dropped: torch.Tensor) -> list[tuple[int, int]]:
    runs = []
    for row in dropped.tolist():
        start = None
        for i, d in enumerate(row + [False]):
            if d and start is None:
                start = i
            elif not d and start is not None:
                runs.append((start, i - start))
                start = None
    return runs


def test_drop_block_pattern_check_catches_elementwise_mutant():
    y = dropout(torch.ones(32, 4, 48), 0.1, True)
    assert not torch.equal(opening((y == 0).flatten(0, 1), 3), (y == 0).flatten(0, 1))


@pytest.mark.parametrize("spatial,b", [((64,), 5), ((16, 16), 3), ((20, 12), 4)])
def test_drop_block_drop_fraction(spatial, b):
    p = 0.1
    y = DropBlock(p, block_size=b)(torch.ones(4000, 1, *spatial))
    frac = (y == 0).flatten(1).double().mean(1)  # one independent map per row
    expected = expected_drop_fraction(p, spatial, b)
    se = frac.std().item() / math.sqrt(len(frac))
    z = (frac.mean().item() - expected) / se
    assert abs(z) < z_crit(), f"dropped {frac.mean():.4f}, expected {expected:.4f} ({z:.1f} SE)"
    # the paper's gamma makes that about p at this rate (overlaps of blocks cost O(p^2))
    assert abs(expected - p) < 0.01


def test_drop_block_rescales_by_kept_fraction():
    x = torch.ones(16, 4, 32)
    y = drop_block(x, 0.2, 5, True)
    kept = int((y != 0).sum())
    assert 0 < kept < y.numel()
    torch.testing.assert_close(y[y != 0], torch.full((kept,), y.numel() / kept))
    torch.testing.assert_close(y.mean(), torch.tensor(1.0))  # a constant map keeps its mean exactly


def drop_block_draws(x: torch.Tensor, p: float, b: int, rescale: bool = True, n: int = 3000) -> torch.Tensor:
    out = []
    for _ in range(n):
        y = drop_block(x, p, b, True)
        out.append(y if rescale else (y != 0) * x)
    return torch.stack(out)


def drop_block_expectation(x: torch.Tensor, p: float, b: int) -> torch.Tensor:
    """E[y_j] ~= x_j (1 - p_j) / (1 - mean p): DropBlock rescales by the kept fraction of the
    whole tensor, while border units, covered by fewer candidate blocks, are dropped less
    often than interior ones -- so the expectation is preserved on average over the map,
    not unit by unit (a property of the paper's algorithm)."""
    pj = drop_probabilities(p, tuple(x.shape[2:]), b)
    return x.double() * (1 - pj) / (1 - pj.mean())


def test_drop_block_expectation():
    p, b = 0.2, 5
    x = positive_input(2, 4, 32)
    expect = drop_block_expectation(x, p, b)
    assert_mean_preserved(drop_block_draws(x, p, b), expect, "DropBlock E[y]")
    # the documented border effect is real: inside the map E[y] is below x (by 3% here)
    interior = (expect / x.double())[..., b:-b]
    assert torch.all(interior < 1) and torch.all(interior > 0.95)


def test_drop_block_mean_check_catches_missing_rescale_mutant():
    p, b = 0.2, 5
    x = positive_input(2, 4, 32)
    with pytest.raises(AssertionError):
        assert_mean_preserved(drop_block_draws(x, p, b, rescale=False), drop_block_expectation(x, p, b), "mutant")


def test_drop_block_small_maps_and_bad_input():
    y = DropBlock(0.3, block_size=7)(torch.ones(8, 2, 3, 4))  # block clipped to the map
    assert y.shape == (8, 2, 3, 4)
    with pytest.raises(ValueError, match="N, C, L"):
        DropBlock(0.1, 3)(torch.ones(4, 5))
    with pytest.raises(ValueError, match="block_size"):
        DropBlock(0.1, 0)


# --------------------------------------------------------------------------------------
# model-wide helpers
# --------------------------------------------------------------------------------------


def test_model_helpers_set_rate_and_mc():
    model = MLP((40,), 10, hidden=32, depth=3, slots=Slots(input=lambda: Dropout(0.1), hidden=lambda: Dropout(0.5)))
    layers = list(dropout_layers(model))
    assert len(layers) == 4
    assert set_drop_rate(model, 0.3) == 4 and all(layer.p == 0.3 for layer in layers)
    with pytest.raises(ValueError):
        set_drop_rate(model, 2.0)
    x = torch.randn(8, 40)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert set_mc_dropout(model, True) == 4
    assert not model.training and all(layer.mc for layer in layers)
    assert not torch.equal(model(x), model(x))  # MC dropout: stochastic in eval
    set_mc_dropout(model, False)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert set_mc_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), True) == 0
