"""Dropout-family layers: the stochastic building blocks that plug into a model's slots.

Layout follows timm's ``layers/drop.py``: each regularizer is a small function
(``dropout``, ``gaussian_dropout``, ``drop_block``, ``drop_path`` ...) plus a thin
``nn.Module`` with a fast path (``if p == 0 or not active: return x``) and an
``extra_repr``.

Every layer derives from :class:`DropoutLayer`, which gives it

* a mutable drop rate ``p`` (validated on assignment; a scheduler callback may change it
  between steps, see :func:`set_drop_rate`), and
* a switch ``mc``: when True the layer stays stochastic in eval mode, which turns a
  trained network into Monte-Carlo dropout (Gal & Ghahramani 2016, "Dropout as a Bayesian
  approximation"), see :func:`set_mc_dropout`.

A layer is *active* (samples noise) when ``self.training or self.mc``.

Stacked mode (populations under ``torch.func.vmap``)
-----------------------------------------------------
The population engine trains S replicas of a model as one: it stacks their parameters and
buffers with ``torch.func.stack_module_state`` and runs
``vmap(lambda params, buffers, x: functional_call(base, (params, buffers), (x,)),
randomness="different")``. Replicas may differ in their drop rates, so every layer also
holds its rate as a **non-persistent buffer** ``rate`` (a 0-d float32 tensor, kept equal to
``p`` by ``p``'s setter; non-persistent, so ``state_dict`` and checkpoints do not change):
stacked, it becomes an [S] tensor of which each replica sees its own 0-d slice.

With ``layer.stacked = True`` (see :func:`set_stacked`) ``forward`` passes ``self.rate``
instead of the float ``p`` to its function, and every function here takes a tensor ``p``
too. That path is vmap-safe: its noise is drawn out of place (``torch.rand(shape)``,
``torch.randn_like``, which vmap draws afresh for every replica; the packed-bits path's
in-place ``random_`` on a fresh, unbatched tensor is refused under
``randomness="different"``), and it has no Python branch on the rate's value (``p = 0``
and ``p = 1`` come out of the arithmetic: identity, zeros). Its Bernoulli masks are
``u >= p`` for ``u ~ U[0, 1)`` in float32, so the drop rate is ``p`` up to float32's
2**-24 instead of the packed-bits quantisation below, at the cost of one float32 draw per
unit. Whether the layer is active stays the Python bool ``self.training or self.mc`` of
the module that runs (the ``base`` of ``functional_call``). With ``stacked = False`` (the
default, for single runs) nothing changes: the float ``p`` and the packed-bits masks below.

Rows mode (a population folded into the batch, no vmap): for models whose every layer treats
each input row on its own, the engine runs all replicas' batches as one [S*B, ...] batch
(``engine/population.py``) and hands each layer its rate per row, a tensor ``p`` of shape
[S*B, 1] (any shape that broadcasts against the input). Without vmap the packed-bits draw
is allowed again, so :func:`bernoulli_noise` gives such a rate the 16-bit masks below, with
each row's own threshold: a row's drop probability is ``realised_drop_rate(p_row)``, the
rate a separate run of that replica uses. Layers whose math broadcasts a per-row rate say
so with ``row_rates = True`` (dropout, Gaussian and alpha dropout, DropPath); the others
(DropConnect's weight mask, the channel and block masks) train under vmap.

Once stacked, the stacked ``rate`` buffers are what the replicas use: a schedule that
changes rates must write them (``buffers["...rate"][i]``), since ``layer.p`` on a replica
only refills that replica's own, no longer used, buffer. Like any floating buffer, ``rate``
follows ``model.to(dtype)`` (``model.half()`` rounds it to float16).

Fast Bernoulli masks
--------------------
On CPU, ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, which we
measured at about 12 ns per element (torch 2.13, one thread) -- for the MNIST-1D MLP that
is as much as the matmul it follows, and 1.5x the cost of a whole training step for two
dropout layers (``benchmarks/bench_dropout.py``). :func:`bernoulli_noise` instead
draws 64 random bits per int64 word with ``random_`` and reads them as 8 (or 4) uniform
bytes (or 16-bit words), so a mask of n units costs n/8 (or n/4) 64-bit draws, and turns
them into the multiplicative noise {0, 1/(1-p)} with three cheap integer/float passes.
The price is a quantised drop rate:

* if ``p * 256`` is an integer (0.5, 0.25, 0.125, 0.375, ...) 8 random bits per unit are
  used and the drop probability is **exactly** ``p``;
* otherwise 16 bits per unit are used and the realised drop probability is
  ``round(p * 65536) / 65536``, within ``2**-17`` (about 7.6e-6) of ``p``
  (``2**-16`` for p below 2**-16 or above 1 - 2**-16).

:func:`realised_drop_rate` returns the probability actually used, and the kept units are
scaled by ``1 / (1 - realised_drop_rate(p))``, so the expectation ``E[dropout(x)] = x``
holds exactly whatever ``p`` is. The same code runs on every device (the generator is
the device's default one, so ``torch.manual_seed`` makes it reproducible).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DropoutLayer",
    "dropout_layers",
    "set_mc_dropout",
    "set_drop_rate",
    "set_stacked",
    "realised_drop_rate",
    "bernoulli_noise",
    "dropout",
    "Dropout",
    "gaussian_dropout",
    "GaussianDropout",
    "alpha_dropout",
    "AlphaDropout",
    "DropConnectLinear",
    "spatial_dropout",
    "SpatialDropout",
    "drop_block",
    "DropBlock",
    "drop_path",
    "DropPath",
]

_INT64_MIN = -(2**63)


# --------------------------------------------------------------------------------------
# the marker base class and model-wide helpers
# --------------------------------------------------------------------------------------


def _check_p(p: float, *, name: str = "p", upper_inclusive: bool = True) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {p!r}") from None
    ok = 0.0 <= p <= 1.0 if upper_inclusive else 0.0 <= p < 1.0
    if not ok:
        allowed = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name}={p} is outside the allowed range {allowed}")
    return p


class DropoutLayer(nn.Module):
    """Marker base class of every dropout-family layer in regbench.

    Attributes:
        p: drop rate, a float that may be changed during training (validated on
            assignment; a subclass narrows the range with ``_p_upper_inclusive``).
        rate: non-persistent buffer, a 0-d float32 tensor always equal to ``p`` (set by
            ``p``'s setter); the rate that stacked mode reads, one per replica once stacked.
        mc: when True the layer samples noise in eval mode too (MC dropout).
        stacked: when True ``forward`` takes its rate from ``rate`` and draws its noise out
            of place, so that it runs under ``torch.func.vmap`` (see the module docstring).
    """

    # Gaussian dropout and DropBlock cannot take p = 1 (infinite variance / no seed rate)
    _p_upper_inclusive = True
    # whether forward's math broadcasts a rate per input row ([rows, 1]): rows mode, module docstring
    row_rates = False

    def __init__(self, p: float = 0.5, mc: bool = False):
        super().__init__()
        self.stacked = False
        self.p = p
        self.mc = bool(mc)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        # validate here rather than in forward so that a scheduler that sets a bad rate
        # fails at the assignment, with the layer's class in the message
        self._p = _check_p(value, name=f"{type(self).__name__}.p", upper_inclusive=self._p_upper_inclusive)
        rate = self._buffers.get("rate")
        if rate is None:
            # non-persistent: a checkpoint of a model with dropout layers keeps the keys it had
            self.register_buffer("rate", torch.tensor(self._p, dtype=torch.float32), persistent=False)
        else:
            with torch.no_grad():  # in place: keeps the buffer's device, and costs no transfer
                rate.fill_(self._p)

    @property
    def active(self) -> bool:
        """Whether the layer samples noise now: in training, or in eval with ``mc`` on."""
        return self.training or self.mc

    def extra_repr(self) -> str:
        return f"p={self.p:g}" + (", mc=True" if self.mc else "") + (", stacked=True" if self.stacked else "")


def dropout_layers(model: nn.Module) -> Iterator[DropoutLayer]:
    """Yield every :class:`DropoutLayer` inside ``model`` (``model`` itself included)."""
    for module in model.modules():
        if isinstance(module, DropoutLayer):
            yield module


def set_mc_dropout(model: nn.Module, on: bool) -> int:
    """Switch Monte-Carlo dropout on or off for every regbench dropout layer in ``model``.

    With ``on=True`` the layers keep sampling in ``model.eval()`` so repeated forward
    passes give samples of the predictive distribution (Gal & Ghahramani 2016); the rest
    of the model (batch norm, ...) stays in eval mode. Plain ``torch.nn.Dropout`` layers
    are not touched. Returns the number of layers switched, so a caller can refuse a
    model without any (MC dropout over a deterministic network is a silent no-op).
    """
    n = 0
    for layer in dropout_layers(model):
        layer.mc = bool(on)
        n += 1
    return n


def set_stacked(model: nn.Module, on: bool) -> int:
    """Switch stacked mode on or off for every regbench dropout layer in ``model``.

    Stacked layers read their rate from the buffer ``rate`` and draw their noise out of
    place, so S replicas stacked with ``torch.func.stack_module_state`` run under
    ``vmap(functional_call(...), randomness="different")`` with a rate and independent
    noise each. Set it on every replica (and on the base module given to
    ``functional_call``) before stacking. Returns the number of layers switched.
    """
    n = 0
    for layer in dropout_layers(model):
        layer.stacked = bool(on)
        n += 1
    return n


def set_drop_rate(model: nn.Module, p: float) -> int:
    """Set the drop rate of every regbench dropout layer in ``model``; returns their number."""
    n = 0
    for layer in dropout_layers(model):
        layer.p = p
        n += 1
    return n


# --------------------------------------------------------------------------------------
# Bernoulli noise from packed random bits
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # called on every forward; the drop rates in use are few
def _quantise(p: float) -> tuple[int, int]:
    """(bits, threshold) such that a unit is dropped iff its uniform ``bits``-bit word < threshold."""
    scaled = p * 256.0
    if scaled == int(scaled):
        return 8, int(scaled)  # exact, 8 random bits per unit
    # 16 bits: keep 0 < threshold < 65536 so that 0 < p < 1 never degenerates to 0 or 1
    return 16, min(max(round(p * 65536.0), 1), 65535)


def realised_drop_rate(p: float) -> float:
    """The drop probability :func:`bernoulli_noise` really uses for a requested ``p``.

    Equal to ``p`` when ``p * 256`` is an integer; otherwise ``round(p * 2**16) / 2**16``
    (clipped to [2**-16, 1 - 2**-16]), so ``|realised_drop_rate(p) - p| <= 2**-16``.
    """
    p = _check_p(p)
    if p in (0.0, 1.0):
        return p
    bits, threshold = _quantise(p)
    return threshold / float(1 << bits)


def bernoulli_noise(
    shape: Sequence[int], p: float | torch.Tensor, *, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None
) -> torch.Tensor:
    """Multiplicative inverted-dropout noise: 0 with probability p', else 1/(1-p').

    For a float ``p``: ``p' = realised_drop_rate(p)`` (see the module docstring), so
    ``E[noise] = 1`` exactly. Requires ``0 < p < 1``. Draws ``ceil(n*bits/64)`` 64-bit
    random words from the device's default generator.

    For a 0-d tensor ``p`` (stacked mode): vmap-safe, ``noise = 1[u >= p] / (1 - p)`` with
    ``u ~ U[0, 1)`` float32 drawn out of place, so ``p' = p`` (to 2**-24), ``p = 0`` gives
    ones and ``p = 1`` zeros (not 0 * inf). The value of ``p`` is not checked: that would
    read it, which vmap forbids (the layers validate ``p`` on assignment).

    For a tensor ``p`` with dimensions (rows mode, never under vmap; it broadcasts against
    ``shape``): the packed 16-bit masks, each element with its own rate's threshold, so
    ``p'`` is ``realised_drop_rate`` of that element's rate; ``p = 1`` gives zeros.
    """
    if isinstance(p, torch.Tensor):
        if p.dim():
            return _row_rate_noise(torch.Size(shape), p, dtype, device)
        # 1/(1-p) is only taken where p < 1 (a 0-d scalar per replica: cheap), so p = 1 gives
        # zeros, not 0 * inf; a bool mask times it is ~1.7x faster than torch.where on the mask
        scale = torch.where(p < 1.0, 1.0 / (1.0 - p), 0.0)
        noise = (torch.rand(shape, device=device) >= p) * scale
        return noise if noise.dtype == dtype else noise.to(dtype)
    if not 0.0 < p < 1.0:
        raise ValueError(f"bernoulli_noise needs 0 < p < 1, got p={p}")
    shape = torch.Size(shape)
    return _noise(p, shape.numel(), dtype, device, shape, None)


def _row_rate_noise(shape: torch.Size, p: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """Rows mode's noise: the single-run masks of ``_noise`` with a threshold per element. ``p``
    broadcasts against ``shape`` (a rate per row). When every rate is a multiple of 1/256 (0.5, 0.25,
    0 and 1 included) each element takes 8 random bits, as ``_noise`` does for such a rate; otherwise
    16 bits, dropped iff the word is below ``round(p * 65536)`` (clamped to 1..65535 for 0 < p < 1, as
    ``_quantise``). Kept elements are scaled by ``1 / (1 - p')``; ``p = 1`` gives zeros. So each
    element is dropped at exactly ``realised_drop_rate`` of its (float32) rate, and a block of rows at
    one rate draws the very mask ``_noise`` draws from the same generator state."""
    bits, lo, scale = _row_rate_plan(p)
    per_word = 64 // bits
    n = shape.numel()
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=device).random_(_INT64_MIN, None)
    r = words.view(torch.uint8 if bits == 8 else torch.int16)  # uniform on 0..255 / -32768..32767
    if r.numel() != n:
        r = r[:n]
    # the comparison written straight into a float tensor: ~2x faster than bool * float, which
    # converts the bool mask first
    noise = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(r.view(shape), lo, out=noise).mul_(scale)


def _row_rate_plan(p: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(bits, lo, scale) of ``_row_rate_noise`` for the rate tensor ``p``: keep iff the word >= lo.
    Kept on ``p`` itself (valid while ``p`` is unchanged in place): rows mode reuses one rate tensor
    for a whole epoch, and the ~8 small tensor ops (and one sync) cost ~60 us a call, ~2% of a step
    of the MNIST-1D MLP at S = 10."""
    plan = getattr(p, "_regbench_row_plan", None)
    if plan is not None and plan[0] == p._version:
        return plan[1]
    # thresholds: integers, exact in float32 (p * 2**16 only shifts the exponent), as _quantise's
    t = (p.float() * 65536.0).round()
    t = torch.where((p > 0) & (p < 1), t.clamp(1.0, 65535.0), t)
    scale = torch.where(t < 65536.0, 65536.0 / (65536.0 - t), 0.0)   # p = 1: noise 0
    scaled = p.float() * 256.0
    if bool((scaled == scaled.round()).all()):   # as _quantise: every p a multiple of 1/256, 8-bit words
        out = (8, (t / 256.0).clamp(max=255.0).to(torch.uint8), scale)
    else:
        out = (16, (t - 32768.0).clamp(max=32767.0).to(torch.int16), scale)
    p._regbench_row_plan = (p._version, out)
    return out


def _times_bernoulli(x: torch.Tensor, p: float | torch.Tensor, shape: Sequence[int] | None, what: str) -> torch.Tensor:
    """``x * bernoulli_noise(shape, p)`` (``shape`` broadcasts over x; None: x's own shape).

    The core of dropout, spatial dropout, DropPath and DropConnect. A float ``p`` is
    checked, ``p = 0`` returns x and ``p = 1`` gives ``x * 0`` (the graph is kept, with a
    zero gradient, like torch's dropout); a tensor ``p`` goes straight to the vmap-safe noise.
    """
    if isinstance(p, torch.Tensor):
        return x * bernoulli_noise(x.shape if shape is None else shape, p, dtype=x.dtype, device=x.device)
    if p == 0.0:
        return x
    if not 0.0 < p <= 1.0:
        raise ValueError(f"{what}: p={p} is outside the allowed range [0, 1]")
    if p == 1.0:
        return x * 0.0
    if shape is None:  # the hot path: view_as(x) instead of building a Size
        return x * _noise(p, x.numel(), x.dtype, x.device, None, x)
    return x * bernoulli_noise(shape, p, dtype=x.dtype, device=x.device)


def _noise(p: float, n: int, dtype: torch.dtype, device, shape, like: torch.Tensor | None) -> torch.Tensor:
    # the hot path of every Bernoulli layer: it runs twice per step in the MNIST-1D MLP,
    # where each extra tensor op costs ~5 us, so every op here is counted
    bits, threshold = _quantise(p)
    scale = 1.0 / (1.0 - threshold / float(1 << bits))
    per_word = 64 // bits
    # random_(INT64_MIN, None) samples the full 64-bit range uniformly, so every byte
    # (every 16-bit word) of the result is uniform as well
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=device).random_(_INT64_MIN, None)
    r = words.view(torch.uint8 if bits == 8 else torch.int16)  # uniform on 0..255 / -32768..32767
    if r.numel() != n:
        r = r[:n]
    r = r.view_as(like) if like is not None else r.view(shape)  # view_as parses faster than a Size
    if bits == 8 and threshold == 128:
        # p = 1/2: the top bit of each byte is the keep indicator, one pass instead of two
        keep = r.bitwise_right_shift(7)
    else:
        # keep iff r >= lo + 1, i.e. with probability 1 - threshold / 2**bits. clamp + sub
        # gives {0, 1} in two cheap integer passes; a comparison would give bool, whose
        # conversions and products are several times slower on CPU than integer ones
        lo = threshold - 1 if bits == 8 else threshold - 1 - 32768
        keep = r.clamp(lo, lo + 1).sub_(lo)
    if dtype == torch.get_default_dtype():
        return keep.mul(scale)  # int tensor * python float -> default float dtype, one pass
    return keep.to(dtype).mul_(scale)


# --------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------


def dropout(x: torch.Tensor, p: float | torch.Tensor = 0.5, training: bool = True) -> torch.Tensor:
    """Inverted Bernoulli dropout (Srivastava et al. 2014, JMLR 15).

    ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` i.i.d. per element, so
    ``E[y] = x``. The mask comes from :func:`bernoulli_noise` (8 or 16 random bits per
    element): ``p`` is exact when ``p * 256`` is an integer
    and within 2**-16 otherwise, and the scale uses the realised rate so ``E[y] = x``
    exactly. Any shape, any device, differentiable (``dy/dx = m / (1 - p)``).
    A 0-d tensor ``p`` takes the vmap-safe path of :func:`bernoulli_noise` (stacked mode).
    """
    if not training:
        return x
    return _times_bernoulli(x, p, None, "dropout")


class Dropout(DropoutLayer):
    """Inverted Bernoulli dropout (Srivastava et al. 2014); see :func:`dropout`.

    A faster drop-in for ``torch.nn.Dropout`` on CPU, with ``mc`` for MC dropout.
    """

    row_rates = True

    def __init__(self, p: float = 0.5, mc: bool = False):
        super().__init__(p, mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return dropout(x, self.rate if self.stacked else self._p, True)


# --------------------------------------------------------------------------------------
# Gaussian dropout
# --------------------------------------------------------------------------------------


def _is_zero_rate(p: float | torch.Tensor, what: str) -> bool:
    """For a float ``p`` in [0, 1): whether it is 0 (the layer is the identity); outside, ValueError.
    A tensor ``p`` (stacked mode) is never read here: vmap forbids it (the layer checked it on assignment)."""
    if isinstance(p, torch.Tensor):
        return False
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what}: p={p} is outside the allowed range [0, 1)")
    return p == 0.0


def gaussian_dropout(x: torch.Tensor, p: float | torch.Tensor = 0.5, training: bool = True) -> torch.Tensor:
    """Multiplicative Gaussian noise (Srivastava et al. 2014, section 10).

    ``y = x * m`` with ``m ~ N(1, sigma^2)``, ``sigma^2 = p / (1 - p)``: the same mean and
    variance as the inverted Bernoulli mask ``Bernoulli(1 - p) / (1 - p)``. ``0 <= p < 1``.
    ``p`` may be a 0-d tensor (stacked mode; not range-checked, ``p = 0`` gives sigma 0):
    the same formula, vmap-safe since ``randn_like`` draws a fresh tensor.
    """
    if not training or _is_zero_rate(p, "gaussian_dropout"):
        return x
    sigma = (p / (1.0 - p)) ** 0.5
    return x * torch.randn_like(x).mul_(sigma).add_(1.0)


class GaussianDropout(DropoutLayer):
    """Gaussian dropout, ``x * N(1, p/(1-p))``; see :func:`gaussian_dropout`."""

    row_rates = True

    _p_upper_inclusive = False

    def __init__(self, p: float = 0.5, mc: bool = False):
        super().__init__(p, mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return gaussian_dropout(x, self.rate if self.stacked else self._p, True)


# --------------------------------------------------------------------------------------
# alpha dropout
# --------------------------------------------------------------------------------------


# SELU's negative saturation, -lambda * alpha (Klambauer et al. 2017; torch's alpha_dropout constant)
_SELU_SATURATION = -1.7580993408473766


def alpha_dropout(x: torch.Tensor, p: float | torch.Tensor = 0.5, training: bool = True) -> torch.Tensor:
    """Alpha dropout for self-normalising networks (Klambauer et al. 2017, SELU).

    ``y = a * (x * m + alpha' * (1 - m)) + b`` with ``m ~ Bernoulli(1 - p)``: dropped units
    are set to SELU's negative saturation ``alpha' = -lambda * alpha`` (not 0), then the
    affine map with ``a = ((1-p)(1 + p alpha'^2))^-1/2``, ``b = -a p alpha'`` restores mean
    0 and variance 1 for inputs with mean 0 and variance 1. ``0 <= p < 1`` (at p = 1 the
    affine correction is infinite). A float ``p`` runs ``torch.nn.functional.alpha_dropout``
    (the same formula, fused); a 0-d tensor ``p`` (stacked mode) the formula above with
    ``m = 1[u >= p]``, ``u ~ U[0, 1)`` drawn out of place, vmap-safe.
    """
    if not training or _is_zero_rate(p, "alpha_dropout"):
        return x
    if not isinstance(p, torch.Tensor):
        return F.alpha_dropout(x, p, True)
    keep = torch.rand(x.shape, device=x.device) >= p
    a = ((1.0 - p) * (1.0 + p * _SELU_SATURATION**2)) ** -0.5
    b = -a * p * _SELU_SATURATION
    return torch.where(keep, x, _SELU_SATURATION) * a.to(x.dtype) + b.to(x.dtype)


class AlphaDropout(DropoutLayer):
    """Alpha dropout for SELU networks (Klambauer et al. 2017); see :func:`alpha_dropout`.

    Use with a SELU activation. ``0 <= p < 1``.
    """

    row_rates = True

    _p_upper_inclusive = False

    def __init__(self, p: float = 0.5, mc: bool = False):
        super().__init__(p, mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return alpha_dropout(x, self.rate if self.stacked else self._p, True)


# --------------------------------------------------------------------------------------
# DropConnect
# --------------------------------------------------------------------------------------


class DropConnectLinear(nn.Linear, DropoutLayer):
    """A ``nn.Linear`` that drops weights instead of activations (Wan et al. 2013, DropConnect).

    In training, ``y = x (W * M)^T / (1 - p) + b`` with one mask ``M ~ Bernoulli(1 - p)``
    of W's shape per forward call (i.e. per mini-batch, shared by all its samples, as in
    Wan et al.'s efficient implementation); the bias is not dropped. In eval
    ``y = x W^T + b`` with the full weights (the mean of the training-time layer, i.e.
    the "weight scaling" inference rule rather than the paper's Gaussian moment matching).
    ``p`` is keyword-only so that ``functools.partial(DropConnectLinear, p=0.5)`` fits the
    ``linear`` slot's ``(in_features, out_features)`` signature and a positional third
    argument cannot be mistaken for nn.Linear's ``bias``. The mask uses
    :func:`bernoulli_noise` (same quantisation of p as :func:`dropout`). Stacked (under
    vmap), each replica draws its own mask of its own weight with its own ``rate``.
    """

    def __init__(self, in_features: int, out_features: int, *, p: float = 0.5, bias: bool = True,
                 mc: bool = False, device=None, dtype=None):
        # nn.Linear.__init__ runs DropoutLayer.__init__ (next in the MRO) with its defaults,
        # which registers the buffer ``rate`` before the weights; the setter below refills it
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if device is not None:
            self.rate = self.rate.to(device)
        self.p = p
        self.mc = bool(mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or (self._p == 0.0 and not self.stacked):
            return F.linear(x, self.weight, self.bias)
        weight = _times_bernoulli(self.weight, self.rate if self.stacked else self._p, self.weight.shape,
                                  "DropConnectLinear")
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ", " + DropoutLayer.extra_repr(self)


# --------------------------------------------------------------------------------------
# spatial dropout
# --------------------------------------------------------------------------------------


def spatial_dropout(x: torch.Tensor, p: float | torch.Tensor = 0.5, training: bool = True) -> torch.Tensor:
    """Channel-wise dropout of conv feature maps (Tompson et al. 2015, "SpatialDropout").

    For ``x`` of shape [N, C, *spatial] (1-D [N, C, L] or 2-D [N, C, H, W]):
    ``y[n, c] = x[n, c] * m[n, c] / (1 - p)``, ``m[n, c] ~ Bernoulli(1 - p)``: a whole
    feature map is kept or dropped, because neighbouring activations are strongly
    correlated and element-wise dropout barely removes information from them. A 0-d
    tensor ``p`` takes the vmap-safe path of :func:`bernoulli_noise` (stacked mode).
    """
    if x.dim() < 3:
        raise ValueError(f"spatial dropout needs an input [N, C, *spatial] with at least 3 dims, got shape {tuple(x.shape)}")
    if not training:
        return x
    return _times_bernoulli(x, p, x.shape[:2] + (1,) * (x.dim() - 2), "spatial_dropout")


class SpatialDropout(DropoutLayer):
    """Drops whole channels of [N, C, L] or [N, C, H, W] maps; see :func:`spatial_dropout`."""

    def __init__(self, p: float = 0.5, mc: bool = False):
        super().__init__(p, mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"SpatialDropout needs an input [N, C, *spatial], got shape {tuple(x.shape)}")
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return spatial_dropout(x, self.rate if self.stacked else self._p, True)


# --------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------


def drop_block_gamma(p: float | torch.Tensor, spatial: Sequence[int], block_size: int) -> float | torch.Tensor:
    """DropBlock's seed rate (Ghiasi et al. 2018, eq. 1; per dimension as in timm).

    ``gamma = p / prod(b_d) * prod(S_d) / prod(S_d - b_d + 1)`` with ``b_d =
    min(block_size, S_d)``, capped at 1: seeds can only fall where a whole block fits
    (``S_d - b_d + 1`` positions per dimension), and the expected number of seeds times the
    block area is ``p`` times the map size. A tensor ``p`` gives a tensor gamma.
    """
    bs = [min(block_size, s) for s in spatial]
    valid = math.prod(s - b + 1 for s, b in zip(spatial, bs))
    gamma = p * (math.prod(spatial) / (math.prod(bs) * valid))
    return gamma.clamp(max=1.0) if isinstance(gamma, torch.Tensor) else min(1.0, gamma)


def drop_block(x: torch.Tensor, p: float | torch.Tensor = 0.1, block_size: int = 5, training: bool = True
               ) -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018, Algorithm 1) for 1-D [N, C, L] and 2-D [N, C, H, W] maps.

    1. the block side is clipped to the map, ``b_d = min(block_size, S_d)``;
    2. seeds ``s ~ Bernoulli(gamma)`` i.i.d. for every (n, c) map at every position where a
       whole block fits (block starts ``0 .. S_d - b_d`` per dimension), with
       ``gamma = p / b^2 * (H W) / ((H - b + 1)(W - b + 1))`` (1-D: ``p / b * L / (L - b + 1)``),
       see :func:`drop_block_gamma`;
    3. each seed zeroes its contiguous b(x b) block, so every zero lies in a whole block;
    4. ``y = x * keep * numel(keep) / sum(keep)`` (the paper's and timm's kept-fraction
       rescale, over the whole batch).

    The expected dropped fraction is ``p`` only up to overlaps of blocks: a unit covered
    by ``c`` candidate blocks is dropped with probability ``1 - (1 - gamma)^c`` (units at
    the borders have fewer candidates), e.g. 0.096 at p = 0.1 and 0.265 at p = 0.3
    (b = 5, L = 64). That is the paper's gamma, kept so that results compare with the
    literature. This is timm's ``drop_block_2d`` (its non-"fast" variant), in 1-D and 2-D.

    ``p`` may be a 0-d tensor (stacked mode; not range-checked): the same steps, with a
    tensor gamma; every op is out of place, so it runs under vmap (per replica, the
    rescale's "whole batch" is that replica's batch). ``block_size`` stays a Python int.
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"DropBlock takes [N, C, L] or [N, C, H, W] inputs, got shape {tuple(x.shape)}")
    if not training:
        return x
    if not isinstance(p, torch.Tensor):
        if p == 0.0:
            return x
        if not 0.0 < p < 1.0:
            raise ValueError(f"drop_block: p={p} is outside the allowed range [0, 1)")
    spatial = tuple(x.shape[2:])
    gamma = drop_block_gamma(p, spatial, block_size)
    bs = [min(block_size, s) for s in spatial]
    starts = tuple(s - b + 1 for s, b in zip(spatial, bs))
    # seeds in float32: max-pooling is not implemented for every dtype (e.g. half on CPU)
    seeds = (torch.rand(x.shape[:2] + starts, device=x.device) < gamma).to(torch.float32)
    # unit j is dropped iff a seed starts in [j - b + 1, j]: pad the seed map by b - 1 on
    # both sides and max-pool with a window of b, stride 1 (back to the map's size)
    pad: list[int] = []
    for b in reversed(bs):  # F.pad lists the last dimension first
        pad += [b - 1, b - 1]
    seeds = F.pad(seeds, pad)
    if x.dim() == 3:
        dropped = F.max_pool1d(seeds, kernel_size=bs[0], stride=1)
    else:
        dropped = F.max_pool2d(seeds, kernel_size=tuple(bs), stride=1)
    keep = 1.0 - dropped
    scale = keep.numel() / keep.sum().clamp_min(1.0)
    return x * (keep * scale).to(x.dtype)


class DropBlock(DropoutLayer):
    """DropBlock for [N, C, L] / [N, C, H, W] maps; see :func:`drop_block` for the math."""

    _p_upper_inclusive = False

    def __init__(self, p: float = 0.1, block_size: int = 5, mc: bool = False):
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an integer >= 1")
        super().__init__(p, mc)
        self.block_size = int(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"DropBlock takes [N, C, L] or [N, C, H, W] inputs, got shape {tuple(x.shape)}")
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return drop_block(x, self.rate if self.stacked else self._p, self.block_size, True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block_size={self.block_size}"


# --------------------------------------------------------------------------------------
# DropPath
# --------------------------------------------------------------------------------------


def drop_path(x: torch.Tensor, p: float | torch.Tensor = 0.1, training: bool = True) -> torch.Tensor:
    """Stochastic depth per sample (Huang et al. 2016), for a residual branch.

    ``y[n] = x[n] * m[n] / (1 - p)``, ``m[n] ~ Bernoulli(1 - p)``: the whole branch output
    of sample n is dropped, so ``x + drop_path(branch(x))`` is the identity for it. The
    1/(1-p) rescale (as in timm) makes the eval-time network the expectation of the
    training one, instead of Huang et al.'s multiplying the branch by (1-p) at test time.
    A 0-d tensor ``p`` takes the vmap-safe path of :func:`bernoulli_noise` (stacked mode;
    under vmap, n runs over the replica's own batch).
    """
    if not training:
        return x
    return _times_bernoulli(x, p, (x.shape[0],) + (1,) * (x.dim() - 1), "drop_path")


class DropPath(DropoutLayer):
    """Per-sample stochastic depth; wrap a residual branch: ``x + drop_path(branch(x))``."""

    row_rates = True

    def __init__(self, p: float = 0.1, mc: bool = False):
        super().__init__(p, mc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or (self._p == 0.0 and not self.stacked):
            return x
        return drop_path(x, self.rate if self.stacked else self._p, True)
