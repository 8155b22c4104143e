"""Many seeds in one model: S independent replicas of a small classifier trained as one stacked
network.

Replica i is the network a separate run of seed ``seeds[i]`` would build (``pl.seed_everything``
then ``build_model``, exactly as ``app.train`` does); its weights become slice i of stacked tensors

    weight [S, *the layer's weight shape]   bias [S, out, 1]   (one pair per Linear / Conv1d / Conv2d)

Activations keep the batch last: [S, features, B] between linear layers, [S, channels, *spatial, B]
between conv layers (so flattening a conv map for the next linear layer is a view, in the order of
the model's own ``flatten(1)``).

* a linear layer is one ``torch.baddbmm``: ``W @ h + b``. Feature-major, the 10-class head is an
  [10 x 100] @ [100 x B] product per replica, which the CPU BLAS runs ~4x faster than the [B x 100]
  @ [100 x 10] of the batch-major layout (small N is its slow case); the logits come out [S, classes,
  B], the layout ``F.cross_entropy`` takes without a transpose, and the weight gradient ``g @ h^T``
  is contiguous in nn.Linear's own [out, in] layout. Measured on the MNIST-1D MLP, S = 10, one CPU
  thread: ~220 us per seed-step here, 320 us with ``torch.func.stack_module_state`` +
  ``vmap(functional_call, randomness="different")`` (batch-major linears plus per-op batching
  overhead), ~850 us for a separate run;
* a Conv1d is im2col by a gather plus one ``baddbmm`` (:func:`_conv1d`): ~2.7x cheaper per replica
  on the CPU than a grouped convolution, whose small groups run no faster than S separate ones;
* a Conv2d is one grouped ``conv2d`` (groups = S) of the [B, S * C, H, W] view (:func:`_conv2d`).
  The document's CNN (seed_cnn, 2.2M parameters) is arithmetic-bound on a CPU: stacking it saves
  nothing there (0.83x the training seconds of separate runs over the study's seed_cnn groups,
  experiments/dropout_vs_early_stopping_replicas/agreement.md; the grouped kernel is a little slower
  than S plain ones, and a per-replica loop or an im2col gather were slower still); on a GPU, where a
  separate run is launch-bound, stacking it pays (5.6x, benchmarks/gpu/gpu_study_settings.md).

The optimizer is a plain (fused) ``torch.optim`` one on 2 tensors per layer.

Why the replicas stay independent
    * data order: replica i's epoch e visits ``epoch_order(n, seeds[i], e)`` (``loop.py``), the
      same batches as the separate run;
    * loss: ``sum_i mean-CE_i``, so d loss / d theta_i = d CE_i / d theta_i exactly: the
      gradient of replica i is the separate run's gradient;
    * optimizer: Adam and SGD (momentum, coupled L2 weight decay on weight matrices only, as
      ``app.make_optimizer``) are elementwise, so on stacked tensors they are the separate
      optimizers side by side;
    * max-norm: ``torch.renorm`` of every (replica, unit) row, the separate run's op per row;
    * dropout: the regbench dropout modules of the model, applied to [S, H, B] (or [S, C, *spatial,
      B]) activations, draw i.i.d. masks per element, hence independent across replicas (one generator seeded
      from the seed list: a stacked group is reproducible, but its masks are not the masks a
      separate run would draw, so with dropout on replicas agree with separate runs in
      distribution, not bit for bit);
    * nothing mixes replicas (bmm is per batch element, the CE is per replica), so a replica whose
      loss becomes NaN poisons nobody: it is dropped from the stack at the end of that epoch.

Per replica, as in a separate run: best-epoch tracking on ``reg.monitor``, its own early-stopping
criterion (a fresh copy of the one in ``reg``'s ``CriterionStopping``), restore of the best weights,
divergence detection on the epoch's training loss. A replica that stops (early stop or divergence)
is removed from the stack (weights and optimizer state), so the remaining ones train faster; the
run ends when none is left or at ``max_epochs``.

What is vectorized: models mlp, resmlp, logreg, cnn1d and seed_cnn; regularizers none, bernoulli
and gaussian dropout (hidden, conv-map and input slots, constant rate), weight decay, max-norm (per
unit or output channel), early stopping (any criterion, with or without restore), and their
combinations. Everything else (other dropout kinds, channel-wise dropout on conv maps, schedules,
R-Drop, MC dropout, mixed precision, checkpoints) is refused by :func:`is_vectorizable` with a
reason, so the caller falls back to separate runs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regbench.data.splits import DataSplits
from regbench.models import build_model
from regbench.models.resmlp import ResidualBlock
from regbench.regularizers import Regularization
from regbench.regularizers.layers import Dropout, DropoutLayer, GaussianDropout
from regbench.training.loop import cross_entropy, epoch_order

log = logging.getLogger("regbench")

__all__ = ["VECTORIZABLE_MODELS", "NotVectorizable", "ReplicaMemoryError", "StackedNet", "is_vectorizable",
           "build_stack", "estimate_bytes", "available_bytes", "check_memory", "train_replicas", "train_from_config"]

VECTORIZABLE_MODELS = ("mlp", "resmlp", "logreg", "cnn1d", "seed_cnn")
# modules that act elementwise (so the same module works on [S, H, B]); dropout ones only in training
_ELEMENTWISE = (nn.ReLU, nn.SELU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU)
_DROPOUTS = (Dropout, GaussianDropout)
# Regularization fields this engine understands; any other field set away from its default refuses
_KNOWN_FIELDS = {"name", "slots", "callbacks", "objective", "weight_decay", "monitor", "mode", "restore_best",
                 "mc_samples"}
# evaluation chunks are capped so that one [S, width, chunk] activation stays below this many floats
_EVAL_ELEMENTS = 1 << 25
HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class NotVectorizable(ValueError):
    """The run cannot be stacked (the caller should train the seeds separately)."""


class ReplicaMemoryError(MemoryError):
    """The stacked run would not fit in the device's free memory."""


# ---------------------------------------------------------------------------------------- what
def is_vectorizable(model_name: str, reg: Regularization, *, precision: str = "32-true",
                    check_val_every_n_epoch: int = 1, checkpoint_every: int = 0, devices: Any = 1
                    ) -> tuple[bool, str]:
    """(True, "") if ``train_replicas`` reproduces what separate runs of this arm do, else (False, why).

    The keyword arguments are the trainer settings the stacked loop does not implement (pass
    ``rc.trainer``'s values): it trains in float32, validates every epoch, writes no resumable
    checkpoints and uses one device.
    """
    from regbench.regularizers.constraints import MaxNorm
    from regbench.regularizers.early_stopping import CriterionStopping

    if model_name not in VECTORIZABLE_MODELS:
        return False, f"model={model_name} is not stacked (stacked models: {', '.join(VECTORIZABLE_MODELS)})"
    if precision != "32-true":
        return False, f"trainer.precision={precision} (the stacked loop trains in float32 only)"
    if check_val_every_n_epoch != 1:
        return False, "trainer.check_val_every_n_epoch != 1 (the stacked loop validates every epoch)"
    if checkpoint_every:
        return False, "trainer.checkpoint_every > 0 (stacked runs write no resumable checkpoints)"
    if devices not in (1, "1", None, "auto"):
        return False, f"trainer.devices={devices} (the stacked loop runs on one device)"
    for f in dataclasses.fields(reg):
        if f.name in _KNOWN_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if getattr(reg, f.name) != default:
            return False, f"regularization field {f.name!r} is set and the stacked loop does not implement it"
    if reg.objective is not cross_entropy:
        return False, "the training objective is not plain cross-entropy (R-Drop or another objective)"
    if reg.mc_samples:
        return False, "MC dropout at test time (mc_samples > 0)"
    stoppers = 0
    for c in reg.callbacks:
        if isinstance(c, CriterionStopping):
            stoppers += 1
            if getattr(c, "check_on_train_epoch_end", False) or c.train_monitor != "train/loss":
                return False, "an early-stopping callback with non-default timing or train monitor"
        elif not isinstance(c, MaxNorm):
            what = "a dropout schedule" if type(c).__name__ == "DropoutSchedule" else "a callback"
            return False, f"{what} ({type(c).__name__}) acts during training; the stacked loop has no callbacks"
    if stoppers > 1:
        return False, "more than one early-stopping criterion"
    s = reg.slots
    if s.linear is not nn.Linear:
        return False, "the linear slot is replaced (DropConnect)"
    if not isinstance(s.activation(), _ELEMENTWISE):
        return False, f"activation {type(s.activation()).__name__} is not a known elementwise one"
    if type(s.residual()) is not nn.Identity:
        return False, f"the residual slot holds {type(s.residual()).__name__} (DropPath)"
    if type(s.conv(8, 1)) is not nn.Identity or type(s.conv(8, 2)) is not nn.Identity:
        return False, f"{type(s.conv(8, 1)).__name__} in the conv slot (channel-wise dropout is not stacked)"
    for slot, m in (("hidden", s.hidden()), ("hidden (conv maps)", s.hidden("conv")), ("input", s.input())):
        if type(m) is nn.Identity:
            continue
        if type(m) not in _DROPOUTS:
            return False, f"{type(m).__name__} in the {slot} slot (stacked dropout kinds: bernoulli, gaussian)"
        if m.mc:
            return False, f"MC dropout in the {slot} slot"
    return True, ""


# ---------------------------------------------------------------------------------------- the stacked net
@dataclass
class _Op:
    kind: str                      # "layer" (linear or conv) | "fn" (elementwise, always) | "drop" (training only)
                                   # | "res" (residual block)
    arg: Any = None                # layer: index into weights; fn/drop: the module; res: list of ops


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _ops(model_name: str, net: nn.Module, input_shape: tuple[int, ...]
         ) -> tuple[list[_Op], list[tuple[str, nn.Module]], tuple[int, ...]]:
    """The model's forward pass as a list of ops, its weighted layers (name, module) in op order, and
    the shape one example enters the first layer with ((features,) for the MLPs, (channels, *spatial)
    for the conv nets). Raises NotVectorizable on any module it does not know."""
    layers: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in net.named_modules()}

    def convert(m: nn.Module) -> list[_Op]:
        if type(m) in _LAYERS:
            if m.bias is None:
                raise NotVectorizable(f"{type(m).__name__} without bias ({names[m]})")
            if isinstance(m, nn.Conv1d | nn.Conv2d) and (
                    m.groups != 1 or set(m.dilation) != {1} or m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise NotVectorizable(f"{names[m]}: only plain convolutions are stacked (groups 1, dilation 1, "
                                      f"numeric zero padding)")
            layers.append((names[m], m))
            return [_Op("layer", len(layers) - 1)]
        if type(m) is nn.Identity:
            return []
        if type(m) in _DROPOUTS:
            return [_Op("drop", m)]
        if isinstance(m, _ELEMENTWISE):
            return [_Op("fn", m)]
        if type(m) is nn.Sequential:
            return [op for child in m for op in convert(child)]
        if type(m) is ResidualBlock:
            if type(m.drop_path) is not nn.Identity:
                raise NotVectorizable(f"residual block with {type(m.drop_path).__name__}")
            return [_Op("res", convert(m.branch))]
        raise NotVectorizable(f"module {type(m).__name__} ({names.get(m, '?')}) has no stacked version")

    order = MODEL_ORDER.get(model_name)
    if order is None:
        raise NotVectorizable(f"model={model_name} is not stacked")
    children = set(dict(net.named_children()))
    if children != set(order):  # the model changed: refuse rather than guess its forward
        raise NotVectorizable(f"model={model_name} has submodules {sorted(children)}, expected {sorted(order)}")
    ops = [op for name in order for op in convert(getattr(net, name))]
    # a dropout layer's buffer ``rate`` is its ``p`` again (the "drop" op reads p from the layer)
    buffers = [b for m in net.modules() if not isinstance(m, DropoutLayer) for b in m.buffers(recurse=False)]
    if 2 * len(layers) != len(list(net.parameters())) or buffers:
        raise NotVectorizable(f"model={model_name} has parameters or buffers outside its linear and conv layers")
    first = layers[0][1]
    if isinstance(first, nn.Linear):
        entry: tuple[int, ...] = (first.in_features,)
    elif isinstance(first, nn.Conv1d):  # CNN1D.forward: x.reshape(N, 1, L)
        entry = (first.in_channels, math.prod(input_shape) // first.in_channels)
    else:                               # seed_cnn: images as they are, [N, C, H, W]
        entry = (first.in_channels, *input_shape[-2:])
    if math.prod(entry) != math.prod(input_shape):
        raise NotVectorizable(f"model={model_name}: inputs of shape {tuple(input_shape)} do not enter its first "
                              f"layer as {entry}")
    return ops, layers, entry


# each stacked model's children, in the order its forward() calls them (flatten before the first linear
# is implicit: a conv net's [S, C, *spatial, B] activation is reshaped to [S, C * prod(spatial), B])
MODEL_ORDER = {"mlp": ("input_drop", "hidden", "head"), "resmlp": ("input_drop", "stem", "blocks", "head"),
               "logreg": ("input_drop", "head"), "cnn1d": ("input_drop", "features", "head"),
               "seed_cnn": ("input_drop", "features", "fc1", "fc1_act", "fc1_drop", "fc2")}


def _conv1d(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """S stacked Conv1d on h [S, C_in, L, B] with w [S, C_out, C_in, k], b [S, C_out, 1] -> [S, C_out, L', B].

    im2col with a gather, then one batched matrix product: with the batch innermost, the patches
    (c, j) x (l', b) are ``index_select`` along L of the padded input, already in the [S, C_in * k,
    L' * B] layout ``baddbmm`` takes (no transpose, no copy besides the gather). On the CPU this is
    ~2.7x cheaper per replica than a grouped ``conv1d`` (groups = S), whose small-group kernels are
    no faster than S separate convolutions (MNIST-1D CNN, S = 10, one thread).
    """
    S, c_in, length, B = h.shape
    c_out, k = w.shape[1], w.shape[-1]
    if padding:
        h = F.pad(h, (0, 0, padding, padding))
        length += 2 * padding
    out_len = (length - k) // stride + 1
    idx = (torch.arange(k, device=h.device)[:, None] + stride * torch.arange(out_len, device=h.device)).reshape(-1)
    patches = h.index_select(2, idx).view(S, c_in * k, out_len * B)          # (c, j) x (l', b)
    return torch.baddbmm(b, w.view(S, c_out, c_in * k), patches).view(S, c_out, out_len, B)


def _conv2d(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride, padding) -> torch.Tensor:
    """S stacked Conv2d on h [S, C_in, H, W, B] with w [S, C_out, C_in, kh, kw] -> [S, C_out, H', W', B]:
    one grouped convolution (groups = S) of the [B, S * C_in, H, W] view. With the batch outermost in
    memory, consecutive conv layers need no copies (the permutes are views); an im2col gather as in
    :func:`_conv1d` was 1.8x slower here (the 3x3 patches of 2-D maps are 9x the activation)."""
    S, c_in = h.shape[:2]
    c_out = w.shape[1]
    x = h.permute(4, 0, 1, 2, 3).reshape(h.shape[4], S * c_in, h.shape[2], h.shape[3])
    y = F.conv2d(x, w.view(S * c_out, *w.shape[2:]), b.view(-1), stride=stride, padding=padding, groups=S)
    return y.view(y.shape[0], S, c_out, y.shape[2], y.shape[3]).permute(1, 2, 3, 4, 0)


class StackedNet:
    """S replicas of one feed-forward classifier: ``weights[k]`` [S, *layer k's weight shape],
    ``biases[k]`` [S, out, 1], one pair per nn.Linear / nn.Conv1d / nn.Conv2d of the model.

    ``forward(x)`` takes [S, B, *input_shape] (replica i's own batch) or [B, *input_shape] (one batch
    shared by all replicas, for evaluation) and returns logits [S, classes, B] (class dim second,
    as ``F.cross_entropy`` takes them). Activations keep the batch last: [S, units, B] after a
    linear layer, [S, channels, *spatial, B] after a conv layer, so flattening a conv map for the
    next linear layer orders (channel, position) as the model's own ``flatten(1)`` does.
    """

    def __init__(self, ops: list[_Op], names: list[str], weights: list[torch.Tensor], biases: list[torch.Tensor],
                 modules: list[nn.Module], entry: tuple[int, ...]):
        self.ops, self.names, self.weights, self.biases = ops, names, weights, biases
        self.modules, self.entry = modules, entry

    @property
    def replicas(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def _like(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> "StackedNet":
        return StackedNet(self.ops, self.names, weights, biases, self.modules, self.entry)

    def forward(self, x: torch.Tensor, train: bool, shared: bool = False) -> torch.Tensor:
        """Logits [S, C, B] of x [S, B, *input_shape] (replica i gets x[i]) or, with ``shared``,
        of x [B, *input_shape] given to every replica (a stride-0 view, no copy)."""
        if shared:
            h = x.movedim(0, -1).reshape(*self.entry, x.shape[0]).unsqueeze(0).expand(self.replicas,
                                                                                      *([-1] * (len(self.entry) + 1)))
        else:
            h = x.movedim(1, -1).reshape(x.shape[0], *self.entry, x.shape[1])
        return self._run(self.ops, h, train)

    __call__ = forward

    def _run(self, ops: list[_Op], h: torch.Tensor, train: bool, sizes: list[int] | None = None) -> torch.Tensor:
        for op in ops:
            if op.kind == "layer":
                w, b, m = self.weights[op.arg], self.biases[op.arg], self.modules[op.arg]
                if sizes is not None and h.dim() > 3:  # the copy a conv map's layer makes of it: the im2col
                    # patches of a Conv1d (k x the map), the permuted map of a Conv2d or a flatten
                    sizes.append(h[0].numel() // h.shape[-1] * (m.kernel_size[0] if isinstance(m, nn.Conv1d) else 1))
                if isinstance(m, nn.Linear):
                    # W h + b: [S, out, B]; a conv map [S, C, *spatial, B] is flattened first
                    h = torch.baddbmm(b, w, h.reshape(h.shape[0], -1, h.shape[-1]))
                elif isinstance(m, nn.Conv1d):
                    h = _conv1d(h, w, b, m.stride[0], m.padding[0])
                else:
                    h = _conv2d(h, w, b, m.stride, m.padding)
                if sizes is not None:
                    sizes.append(h[0].numel() // h.shape[-1])
            elif op.kind == "fn":
                h = op.arg(h)
            elif op.kind == "drop":
                if train:
                    h = op.arg(h)
            else:  # residual block: h + branch(h)
                h = h + self._run(op.arg, h, train, sizes)
        return h

    def layer_sizes(self, input_shape: tuple[int, ...]) -> list[int]:
        """Per example and replica, the number of values each layer outputs, and before each layer
        that takes a conv map, the size of the copy it makes of its input (for the memory estimate)."""
        sizes: list[int] = []
        with torch.no_grad():
            one = self._like([w[:1] for w in self.weights], [b[:1] for b in self.biases])
            one._run(one.ops, torch.zeros(1, *input_shape).movedim(0, -1).reshape(1, *self.entry, 1), False, sizes)
        return sizes

    def select(self, keep: torch.Tensor) -> "StackedNet":
        """A new StackedNet of replicas ``keep`` (new leaf tensors)."""
        with torch.no_grad():
            pick = lambda ts: [t[keep].clone().requires_grad_(t.requires_grad) for t in ts]  # noqa: E731
            return self._like(pick(self.weights), pick(self.biases))

    def to(self, device) -> "StackedNet":
        with torch.no_grad():
            move = lambda ts: [t.detach().to(device).requires_grad_(True) for t in ts]  # noqa: E731
            return self._like(move(self.weights), move(self.biases))

    def replica_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Replica i as the ``state_dict`` of the model it came from (same keys, CPU tensors)."""
        out = {}
        for name, w, b in zip(self.names, self.weights, self.biases):
            out[f"{name}.weight"] = w[i].detach().cpu().clone()
            out[f"{name}.bias"] = b[i, :, 0].detach().cpu().clone()
        return out

    def max_norm_(self, c: float) -> None:
        """``constraints.max_norm_`` per replica: every unit's (output channel's) incoming weights to
        norm <= c (``torch.renorm`` of the rows of each replica's [out, in * kernel] matrix, as in a
        separate run)."""
        with torch.no_grad():
            for w in self.weights:
                rows = w.view(w.shape[0] * w.shape[1], -1)
                rows.copy_(torch.renorm(rows, p=2, dim=0, maxnorm=c))


def _build_replica(seed: int, model_name: str, model_kwargs: dict, input_shape, num_classes: int,
                   reg: Regularization, data_name: str) -> nn.Module:
    """The network a separate run of `seed` starts from (the same calls as ``app.train``)."""
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=False, verbose=False)
    return build_model(model_name, input_shape, num_classes, reg.slots, regularizer=reg.name,
                       data_name=data_name, **model_kwargs)


def build_stack(seeds: Sequence[int], model_name: str, model_kwargs: dict, input_shape: tuple[int, ...],
                num_classes: int, reg: Regularization, data_name: str = "?", check: bool = True) -> StackedNet:
    """Build replica i as a separate run of ``seeds[i]`` would, and stack the weights (on the CPU).

    With ``check`` the stacked forward pass (eval mode) is compared with every replica's own
    ``net(x)`` on a few random inputs: a model whose forward the op list misreads is refused, not
    trained wrongly.
    """
    ops, names, ws, bs, dropouts, modules, entry = None, None, [], [], None, None, None
    probe = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(12345))
    expected = []
    for seed in seeds:
        net = _build_replica(seed, model_name, model_kwargs, input_shape, num_classes, reg, data_name)
        if ops is None:
            ops, layers, entry = _ops(model_name, net, input_shape)
            names = [n for n, _ in layers]
            modules = [m for _, m in layers]
            dropouts = [op.arg for op in _walk(ops) if op.kind == "drop"]
        else:
            _, layers, _ = _ops(model_name, net, input_shape)
        ws.append([m.weight.detach() for _, m in layers])
        bs.append([m.bias.detach() for _, m in layers])
        if check:
            net.eval()
            with torch.no_grad():
                expected.append(net(probe))
    for d in dropouts:
        d.train()  # the op list calls them only in training
    weights = [torch.stack([w[k] for w in ws]).requires_grad_(True) for k in range(len(names))]  # contiguous
    biases = [torch.stack([b[k] for b in bs]).unsqueeze(-1).requires_grad_(True) for k in range(len(names))]
    stack = StackedNet(ops, names, weights, biases, modules, entry)
    if check:
        with torch.no_grad():
            got = stack(probe, train=False, shared=True).transpose(1, 2)
        want = torch.stack(expected)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise NotVectorizable(f"the stacked forward pass of model={model_name} does not reproduce the model's "
                                  f"(max abs diff {float((got - want).abs().nan_to_num().max()):.3g})")
    return stack


def _walk(ops: list[_Op]):
    for op in ops:
        yield op
        if op.kind == "res":
            yield from _walk(op.arg)


# ---------------------------------------------------------------------------------------- memory
def estimate_bytes(S: int, *, param_count: int, activation_width: int, batch_size: int, n_train: int,
                   eval_chunk: int, widest: int, optim_name: str = "adam", restore_best: bool = True,
                   input_features: int = 0) -> int:
    """A deliberately simple upper-bound-ish estimate of the stacked run's memory, in bytes (float32).

    per replica:
        parameters x (weights + gradient + optimizer state (Adam 2, SGD 1) + final copy
                      + best copy if restoring)
        training activations: 4 floats per hidden value per example of the batch (pre-activation,
            activation, dropout mask, gradient), ``activation_width`` = the sum of ``layer_sizes``:
            every layer's output values plus the input copies of the layers that take conv maps
            (im2col patches, permuted maps, flattened maps), plus the gathered input batch
        evaluation activations: 3 floats x ``widest`` x ``eval_chunk``
        the epoch's batch order and predictions: 2 int64 per training example
    The data itself is not counted (one copy, shared by all replicas).
    """
    state = {"adam": 2, "sgd": 1}.get(optim_name, 2)
    per_param = 3 + state + (1 if restore_best else 0)
    per_replica = (4 * per_param * param_count
                   + 4 * batch_size * (4 * activation_width + input_features)
                   + 4 * 3 * widest * eval_chunk
                   + 8 * 2 * n_train)
    return int(S * per_replica)


def available_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on CUDA; ``MemAvailable`` of
    /proc/meminfo (else the free physical pages of ``os.sysconf``) on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_memory(S: int, estimate: int, device: torch.device | str, available: int | None = None) -> None:
    """Raise ReplicaMemoryError, giving the estimate, when ``estimate`` exceeds the free memory."""
    free = available_bytes(device) if available is None else available
    if estimate > free:
        per = max(1, estimate // S)
        raise ReplicaMemoryError(
            f"replicas={S} need about {estimate / 2**30:.2f} GiB on {device} (estimate: {per / 2**20:.2f} MiB "
            f"per replica, see regbench.training.replicas.estimate_bytes) but only {free / 2**30:.2f} GiB is free; "
            f"use at most replicas={max(1, free // per)} per group or train the seeds separately")


def _widths(stack: StackedNet, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(sum of the layers' output sizes, the widest of them or the input, input size), per example."""
    sizes = stack.layer_sizes(input_shape)
    ins = math.prod(input_shape)
    return sum(sizes), max(sizes + [ins]), ins


# ---------------------------------------------------------------------------------------- training
def _make_optimizer(name: str, lr: float, momentum: float, weight_decay: float, stack: StackedNet):
    """``app.make_optimizer`` for the stacked tensors: weight decay on weight matrices, not biases
    (grouped by role: a stacked bias has 3 dims, so ``p.dim() > 1`` would not tell them apart)."""
    groups = [{"params": stack.weights, "weight_decay": weight_decay}, {"params": stack.biases, "weight_decay": 0.0}]
    if name not in ("adam", "sgd"):
        raise NotVectorizable(f"optimizer {name!r} is not stacked (adam, sgd)")
    make = (lambda **kw: torch.optim.Adam(groups, lr=lr, **kw)) if name == "adam" else (
        lambda **kw: torch.optim.SGD(groups, lr=lr, momentum=momentum, **kw))
    try:
        # the fused kernel: one pass per tensor instead of ~10 (about 15% of a stacked step on CPU);
        # the same update formula, equal to the for-loop implementation up to rounding
        return make(fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device or torch without fused kernels
        return make()


def _compact_optimizer(old, old_stack: StackedNet, new_stack: StackedNet, keep: torch.Tensor, make):
    """A new optimizer over ``new_stack`` whose per-replica state is ``old``'s rows ``keep``."""
    new = make(new_stack)
    for p_old, p_new in zip(old_stack.parameters(), new_stack.parameters()):
        state = old.state.get(p_old)
        if state:
            new.state[p_new] = {k: (v[keep].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                                for k, v in state.items()}
    return new


def _train_epoch(stack: StackedNet, opt, x: torch.Tensor, y: torch.Tensor, orders: torch.Tensor,
                 batch_size: int, maxnorm: float | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``loop.train_epoch`` for S replicas: replica i's batches are ``orders[i]`` split in
    ``batch_size``; returns (mean loss [S], accuracy [S], steps), running values in training mode."""
    S = orders.shape[0]
    losses, preds, sizes = [], [], []
    for idx in orders.split(batch_size, dim=1):
        flat = idx.reshape(-1)
        xb = x.index_select(0, flat).view(S, idx.shape[1], -1)
        yb = y.index_select(0, flat).view(S, idx.shape[1])
        logits = stack(xb, train=True)                      # [S, C, B]
        # class dim second: on CPU ~3x faster than a log-softmax over a last dim of 10
        loss = F.cross_entropy(logits, yb, reduction="none").mean(1)  # [S]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()   # d/d theta_i of the sum = d CE_i / d theta_i
        opt.step()
        if maxnorm is not None:
            stack.max_norm_(maxnorm)
        losses.append(loss.detach())
        preds.append(logits.detach().argmax(1))
        sizes.append(idx.shape[1])
    w = torch.tensor(sizes, device=x.device, dtype=torch.float32)
    mean_loss = (torch.stack(losses, 1) * w).sum(1) / w.sum()
    acc = (torch.cat(preds, 1) == y[orders]).float().mean(1)
    return mean_loss, acc, len(sizes)


@torch.no_grad()
def _evaluate(stack: StackedNet, x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``loop.evaluate`` for S replicas on one shared (x, y): (mean CE [S], accuracy [S]), eval mode."""
    S = stack.replicas
    loss = torch.zeros(S, dtype=torch.float64, device=x.device)
    correct = torch.zeros(S, dtype=torch.float64, device=x.device)
    for xb, yb in zip(x.split(chunk), y.split(chunk)):
        logits = stack(xb, train=False, shared=True)
        ys = yb.unsqueeze(0).expand(S, -1)
        loss += F.cross_entropy(logits, ys, reduction="none").sum(1).double()
        correct += (logits.argmax(1) == ys).sum(1).double()
    return loss / len(y), correct / len(y)


def _finite(v: float) -> bool:
    return v == v and abs(v) != math.inf


def train_replicas(*, seeds: Sequence[int], data: DataSplits, model_name: str, model_kwargs: dict,
                   reg: Regularization, optim_name: str, lr: float, momentum: float, batch_size: int,
                   max_epochs: int, eval_batch_size: int, device: torch.device | str = "cpu",
                   progress_every: int = 0, label: str = "stacked") -> list[dict[str, Any]]:
    """Train ``len(seeds)`` replicas of one arm as one stacked network; one record dict per seed.

    Each dict has the keys and meaning of ``app.train``'s return value for that seed, plus
    ``extra["engine"] = "stacked"``, ``extra["replicas"] = S``, ``extra["replica_index"] = i``,
    ``extra["group_seeds"]``. ``train_seconds`` is the replica's equal share of the group's training
    time (``extra["stacked_train_seconds"]`` is the whole group's). Raises NotVectorizable when
    ``is_vectorizable`` refuses the arm, ReplicaMemoryError when the group would not fit.
    """
    from regbench.regularizers.constraints import MaxNorm
    from regbench.regularizers.early_stopping import CriterionStopping

    import regbench

    t0 = time.perf_counter()
    import_seconds = regbench.startup_seconds()  # as app.train
    seeds = [int(s) for s in seeds]
    S = len(seeds)
    if S < 1:
        raise ValueError("train_replicas needs at least one seed")
    ok, why = is_vectorizable(model_name, reg)
    if not ok:
        raise NotVectorizable(why)
    device = torch.device(device)
    data = data.to(device)
    n = len(data.y_train)

    # memory: estimate from one replica's shape before building S of them
    probe_stack = build_stack(seeds[:1], model_name, model_kwargs, data.input_shape, data.num_classes, reg,
                              data.name, check=False)
    act_width, widest, in_features = _widths(probe_stack, data.input_shape)
    chunk = max(1, min(eval_batch_size, _EVAL_ELEMENTS // (S * widest)))
    param_count = sum(p[0].numel() for p in probe_stack.parameters())
    check_memory(S, estimate_bytes(S, param_count=param_count, activation_width=act_width, batch_size=batch_size,
                                   n_train=n, eval_chunk=chunk, widest=widest, optim_name=optim_name,
                                   restore_best=reg.restore_best, input_features=in_features), device)

    stack = build_stack(seeds, model_name, model_kwargs, data.input_shape, data.num_classes, reg, data.name).to(device)
    # the dropout masks of the group: one stream, reproducible from the seed list
    torch.manual_seed(zlib.crc32(("stacked:" + ",".join(map(str, seeds))).encode()))

    maxnorm = next((c.c for c in reg.callbacks if isinstance(c, MaxNorm)), None)
    stopper = next((c for c in reg.callbacks if isinstance(c, CriterionStopping)), None)
    criteria = [copy.deepcopy(stopper.criterion) for _ in seeds] if stopper else []
    for c in criteria:
        c.reset()
    if maxnorm is not None:
        stack.max_norm_(maxnorm)  # MaxNorm also projects the initial weights (on_fit_start)
    make = lambda st: _make_optimizer(optim_name, lr, momentum, reg.weight_decay, st)  # noqa: E731
    opt = make(stack)

    # per-replica bookkeeping, indexed by position in `seeds`
    history = [{"epoch": [], **{k: [] for k in HISTORY_KEYS}} for _ in seeds]
    best_value = [math.inf if reg.mode == "min" else -math.inf] * S
    best_epoch: list[int | None] = [None] * S
    stopped_epoch: list[int | None] = [None] * S
    stop_reason: list[str | None] = [None] * S
    diverged_epoch: list[int | None] = [None] * S
    steps = [0] * S
    with torch.no_grad():
        final_w = [w.detach().clone() for w in stack.weights]    # weights each replica ends with
        final_b = [b.detach().clone() for b in stack.biases]
        best_w = [w.detach().clone() for w in stack.weights] if reg.restore_best else None
        best_b = [b.detach().clone() for b in stack.biases] if reg.restore_best else None
    active = torch.arange(S, device=device)   # stack row j is replica active[j]
    active_list = list(range(S))

    setup_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    x_train, y_train = data.x_train.flatten(1), data.y_train
    for epoch in range(max_epochs):
        orders = torch.stack([epoch_order(n, seeds[i], epoch) for i in active_list]).to(device)
        tr_loss, tr_acc, n_steps = _train_epoch(stack, opt, x_train, y_train, orders, batch_size, maxnorm)
        va_loss, va_acc = _evaluate(stack, data.x_val, data.y_val, chunk)
        tl, ta, vl, va = (t.tolist() for t in (tr_loss, tr_acc, va_loss, va_acc))  # one sync per epoch
        improved, stopping = [], []
        for j, i in enumerate(active_list):
            steps[i] += n_steps
            row = {"train/loss": tl[j], "train/acc": ta[j], "val/loss": vl[j], "val/acc": va[j]}
            history[i]["epoch"].append(epoch)
            for k in HISTORY_KEYS:
                history[i][k].append(row[k])
            # BestWeights
            v = row[reg.monitor]
            if _finite(v) and (v < best_value[i] if reg.mode == "min" else v > best_value[i]):
                best_value[i], best_epoch[i] = v, epoch
                improved.append(j)
            # CriterionStopping (read at validation end, with the epoch's training loss)
            fired = False
            if stopper is not None:
                value = row[stopper.monitor]
                fired = criteria[i].update(1.0 - value if stopper.mode == "max" else value, row["train/loss"])
                if fired and stopped_epoch[i] is None:
                    stopped_epoch[i] = epoch
                    stop_reason[i] = criteria[i].reason  # 0-based epochs, the monitored metric as logged
            # DivergenceGuard
            if not _finite(tl[j]):
                diverged_epoch[i] = epoch
                log.warning("%s: replica seed=%d: training loss is %s at epoch %d: stopping it as diverged",
                            label, seeds[i], tl[j], epoch)
            if fired or diverged_epoch[i] is not None:
                stopping.append(j)
        with torch.no_grad():
            if best_w is not None and improved:
                rows = torch.tensor(improved, device=device)
                for dst, src in ((best_w, stack.weights), (best_b, stack.biases)):
                    for d, s in zip(dst, src):
                        d[active[rows]] = s[rows]
            last = epoch == max_epochs - 1
            leaving = list(range(len(active_list))) if last else stopping
            if leaving:
                rows = torch.tensor(leaving, device=device)
                for dst, src in ((final_w, stack.weights), (final_b, stack.biases)):
                    for d, s in zip(dst, src):
                        d[active[rows]] = s[rows]
        if progress_every and ((epoch + 1) % progress_every == 0 or last):
            log.info("%s epoch %d/%d: %d of %d replicas training, mean val/acc %.3f", label, epoch + 1, max_epochs,
                     len(active_list), S, sum(va) / len(va))
        if stopping and not last:
            keep_rows = [j for j in range(len(active_list)) if j not in set(stopping)]
            if not keep_rows:
                break
            keep = torch.tensor(keep_rows, device=device)
            new_stack = stack.select(keep)
            opt = _compact_optimizer(opt, stack, new_stack, keep, make)
            stack, active = new_stack, active[keep]
            active_list = [active_list[j] for j in keep_rows]
    train_seconds = time.perf_counter() - t1

    # final evaluation of every replica's final (or restored best) weights, in one stacked pass
    restored = [reg.restore_best and best_epoch[i] is not None for i in range(S)]
    with torch.no_grad():
        pick = torch.tensor(restored, device=device)
        def choose(best, final):  # noqa: E306
            if best is None:
                return [f.clone() for f in final]
            return [torch.where(pick.view(-1, *([1] * (f.dim() - 1))), b, f) for b, f in zip(best, final)]
        end = stack._like(choose(best_w, final_w), choose(best_b, final_b))
    final = {split: _evaluate(end, x, yy, chunk) for split, (x, yy) in
             {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}.items()}
    final = {split: (l.tolist(), a.tolist()) for split, (l, a) in final.items()}

    mechanism = _mechanism(end, seeds[0], model_name, model_kwargs, reg, data, eval_batch_size, device)

    records = []
    for i, seed in enumerate(seeds):
        metrics = {f"{s}/{m}": final[s][k][i] for s in ("train", "val", "test") for k, m in ((1, "acc"), (0, "loss"))}
        h = history[i]
        finite_val = [(l, a) for l, a in zip(h["val/loss"], h["val/acc"]) if l == l]
        metrics["best_val/loss"] = min((l for l, _ in finite_val), default=float("nan"))
        metrics["best_val/acc"] = max((a for _, a in finite_val), default=float("nan"))
        diverged = diverged_epoch[i] is not None or not all(map(_finite, metrics.values()))
        records.append({
            "status": "diverged" if diverged else "ok",
            "metrics": metrics,
            "best_epoch": best_epoch[i],
            "epochs_trained": len(h["epoch"]),
            "stopped_early": stopped_epoch[i] is not None,
            "stopped_epoch": stopped_epoch[i],
            "stop_reason": stop_reason[i],
            "restored_best": restored[i],
            "steps": steps[i],
            "train_seconds": train_seconds / S,
            "history": h,
            "diverged_epoch": diverged_epoch[i],
            "error": f"loss became non-finite at epoch {diverged_epoch[i]}" if diverged else None,
            "extra": {"import_seconds": import_seconds, "setup_seconds": setup_seconds / S, "device": device.type,
                      "resumed": False, "pid": os.getpid(), "threads": torch.get_num_threads(),
                      "parameters": param_count, "engine": "stacked", "replicas": S, "replica_index": i,
                      "group_seeds": list(seeds), "stacked_train_seconds": train_seconds,
                      "stacked_setup_seconds": setup_seconds},
        })
        if mechanism is not None:
            records[-1]["extra"]["mechanism"] = mechanism[i]
    return records


def _mechanism(end: StackedNet, seed: int, model_name: str, model_kwargs: dict, reg: Regularization,
               data: DataSplits, chunk: int, device: torch.device) -> list[dict] | None:
    """``extra["mechanism"]`` of every replica, as ``app.train`` measures it on a separate run's final
    network: replica i's final weights are loaded into one nn.Module of the model, which is measured
    (one test-set pass per replica). None where regbench has no mechanism analysis."""
    try:
        from regbench.analysis.mechanism import measure
    except ImportError:
        return None
    net = _build_replica(seed, model_name, model_kwargs, data.input_shape, data.num_classes, reg, data.name)
    net = net.to(device)
    out = []
    for i in range(end.replicas):
        net.load_state_dict(end.replica_state_dict(i))
        out.append(measure(net, data.x_test, data.y_test, chunk=chunk))
    return out


def train_from_config(rc, seeds: Sequence[int], data_keys: list[str], model_keys: list[str],
                      label: str = "stacked") -> list[dict[str, Any]]:
    """``train_replicas`` for a validated ``RunConfig`` (its ``seed`` is ignored): data, regularization,
    device and threads are built exactly as ``app.train`` builds them. Raises NotVectorizable (with
    the reason) when the arm or the trainer settings cannot be stacked."""
    from regbench.app import pick_device
    from regbench.data import build_data
    from regbench.regularizers import build_regularization

    if rc.trainer.threads:
        torch.set_num_threads(rc.trainer.threads)
    r = rc.regularizer
    reg = build_regularization(r.name, dropout=r.dropout, early_stop=r.early_stop, weight_decay=r.weight_decay,
                               maxnorm=r.maxnorm, rdrop_alpha=r.rdrop_alpha, mc_samples=r.mc_samples,
                               max_epochs=rc.trainer.max_epochs)
    ok, why = is_vectorizable(rc.model.name, reg, precision=rc.trainer.precision,
                              check_val_every_n_epoch=getattr(rc.trainer, "check_val_every_n_epoch", 1),
                              checkpoint_every=rc.trainer.checkpoint_every, devices=rc.trainer.devices)
    if not ok:
        raise NotVectorizable(why)
    if getattr(rc.data, "split_per_seed", None):  # one data object serves every replica
        raise NotVectorizable("data.split_per_seed gives each seed its own validation split")
    device = pick_device(rc.trainer.accelerator)
    data = build_data(rc.data.name, **{k: getattr(rc.data, k) for k in data_keys if k != "split_per_seed"}).to(device)
    return train_replicas(seeds=seeds, data=data, model_name=rc.model.name,
                          model_kwargs={k: getattr(rc.model, k) for k in model_keys}, reg=reg,
                          optim_name=rc.optim.name, lr=rc.optim.lr, momentum=rc.optim.momentum,
                          batch_size=rc.optim.batch_size, max_epochs=rc.trainer.max_epochs,
                          eval_batch_size=rc.trainer.eval_batch_size, device=device,
                          progress_every=rc.trainer.progress_every, label=label)
