"""A population: S >= 1 replicas of one classifier, trained as one stacked model.

Replica i is the ``nn.Module`` a separate run of its config builds (same seed, same
``build_model`` call, its own dropout rates); the population is built from those very modules,
so each layer's math is written once, in its module (``regularizers/layers.py``, ``models/``):

    params, buffers = torch.func.stack_module_state(nets)      # every tensor gets a leading [S]
    logits = vmap(functional_call(base, (params_i, buffers_i), x_i), randomness="different")

as in the functorch model-ensembling tutorial. ``randomness="different"`` gives each replica its
own noise; the dropout layers switch to their vmap-safe form (``layers.set_stacked``: noise drawn
out of place, the rate read from the per-replica buffer ``rate``), so replicas of one population
may have different dropout rates. With S = 1 there is nothing to batch: the replica's module runs
as itself (no vmap, the layers' fast single-run noise), which is the plain-loop parity path.

Rows mode, the fast path for row-wise models (the MLPs, logistic regression): when every module
of the model treats each input row on its own, the replicas' batches are folded into one
replica-major batch of S*B rows and the base module runs once, without vmap. Its ``nn.Linear``
layers become ``RowsLinear`` (one ``baddbmm`` over the stacked weights: Linear's own map, per
replica), and each dropout layer that says ``row_rates`` gets its rates per row ([S*B, 1]), so its
own math and the packed-bits masks of single runs apply (``regularizers/layers.py``, rows mode).
Anything else (DropConnect, batch statistics, objectives other than cross-entropy) runs under
vmap. Measured on the MNIST-1D MLP with dropout, S = 10, one thread: rows mode trains 1.33-1.35x
the seed-steps/s of vmap (``make bench``, "rows mode" row), most of it the cheaper masks.

Loop mode, for models with convolutions on the CPU: each replica's forward is ``functional_call`` of the base
module on that replica's rows of the stacked tensors (``unbind``), one after another, exactly the
call vmap would batch; the loss, backward and the optimizer step stay one stacked call each. vmap's
batching rule runs S convolutions as one grouped convolution (``groups=S``), which oneDNN computes
more slowly than S separate ones on this CPU (``make bench``, "loop mode" rows: the seed document's
CNN and the MNIST-1D CNN, loop mode against vmap and against separate runs).

Why replicas stay independent: replica i's loss is its own objective on its own batch, the
population minimises ``sum_i loss_i`` (so the gradient of replica i's parameters is d loss_i /
d theta_i exactly), and vmap never mixes the [S] dimension. Measured on the MNIST-1D MLP with
dropout, one CPU thread: vmap's per-op overhead is fixed per step, so it fades as S grows
(``make bench``, "population" rows).
"""

from __future__ import annotations

import copy
from functools import partial
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from regbench.training.loop import Objective, cross_entropy


class NotStackable(ValueError):
    """These replicas cannot share one population (different shapes or layers): train them apart."""


def structure(net: nn.Module) -> tuple:
    """What must agree for nets to stack: module types in order, tensor names and shapes."""
    return (tuple(type(m).__name__ for m in net.modules()),
            tuple((n, tuple(p.shape)) for n, p in net.named_parameters()),
            tuple((n, tuple(b.shape)) for n, b in net.named_buffers()))


class RowsLinear(nn.Linear):
    """``nn.Linear`` in rows mode: stacked weight [S, out, in] and bias [S, out], input [S*B, in]
    whose rows s*B .. s*B + B - 1 are replica s's; ``y = x_s W_s^T + b_s`` per replica, one baddbmm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        xs = x.reshape(w.shape[0], -1, w.shape[2])
        wt = w.transpose(1, 2)
        y = torch.bmm(xs, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xs, wt)
        return y.view(-1, w.shape[1])


# modules that treat each input row on its own and hold no state that rows mode would mix up
_ROW_WISE = (nn.Linear, nn.Identity, nn.Sequential, nn.Flatten, nn.ReLU, nn.SELU, nn.ELU, nn.GELU, nn.Tanh,
             nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Softplus)


def loop_preferred(net: nn.Module) -> bool:
    """A model with a convolution, on the CPU, trains faster as a loop over its replicas than under vmap
    (see the module docstring): loop mode. On a GPU S small convolutions one after another would be
    bound by kernel launches, so vmap's one grouped convolution stays (not measured here: no GPU)."""
    on_cpu = all(p.device.type == "cpu" for p in net.parameters())
    return on_cpu and any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())


def rows_blocker(net: nn.Module) -> str | None:
    """Why ``net`` cannot run in rows mode (the first module that does not allow it), or None.
    A model allows it with the class attribute ``rows_independent = True`` (its forward mixes no
    rows), declared on the class itself (a subclass may change forward); a dropout layer with
    ``row_rates = True``; the plain row-wise torch modules above."""
    from regbench.regularizers.layers import DropoutLayer

    for m in net.modules():
        ok = (getattr(m, "row_rates", False) if isinstance(m, DropoutLayer) else
              type(m) in _ROW_WISE or vars(type(m)).get("rows_independent", False))  # declared, not inherited
        if not ok:
            return type(m).__name__
    return None


class Population:
    """S replicas as stacked tensors ``params[name]``: [S, *shape] leaves, ``buffers[name]``: [S, *shape].

    ``rows``: use rows mode when the model allows it (the caller's objective is plain cross-entropy).
    ``loop``: loop mode for a model with convolutions (``loop_preferred``); False: vmap."""

    def __init__(self, nets: list[nn.Module], rows: bool = True, loop: bool = True):
        if not nets:
            raise ValueError("a population needs at least one replica")
        first = structure(nets[0])
        for i, net in enumerate(nets[1:], 1):
            if structure(net) != first:
                raise NotStackable(f"replica {i} has another architecture than replica 0 (layers or tensor shapes differ)")
        self.template = copy.deepcopy(nets[0])          # a real module: replica i is loaded into it on demand
        self.stacked = len(nets) > 1
        self.rows = self.stacked and rows and rows_blocker(nets[0]) is None
        self.loop = self.stacked and not self.rows and loop and loop_preferred(nets[0])
        if self.stacked:
            from regbench.regularizers.layers import set_stacked

            self.base = copy.deepcopy(nets[0]).to("meta")   # the stateless module functional_call runs
            set_stacked(self.base, True)
            if self.rows:
                for m in self.base.modules():
                    if type(m) is nn.Linear:
                        m.__class__ = RowsLinear
            params, buffers = stack_module_state(nets)
            self._parameters = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            self._buffers = {k: v.detach().clone() for k, v in buffers.items()}
        else:  # a population of one is its replica's module itself: no functional_call, no vmap
            self.base = self.net = nets[0]
        self.initial_buffers = {k: v.clone() for k, v in self.buffers.items()}  # every replica's, as built

    # ------------------------------------------------------------------ the tensors
    # Stacked: leaves [S, *shape]. A population of one: [1, *shape] views of its module's own tensors
    # (assigning copies into them), so the optimizer steps the module's parameters (`leaves`).
    def _get(self, kind: str) -> dict[str, torch.Tensor]:
        if self.stacked:
            return getattr(self, "_" + kind)
        return {k: v.unsqueeze(0) for k, v in getattr(self.net, "named_" + kind)()}

    def _set(self, kind: str, value: dict[str, torch.Tensor]) -> None:
        if self.stacked:
            setattr(self, "_" + kind, value)
            return
        with torch.no_grad():
            for k, v in getattr(self.net, "named_" + kind)():
                v.copy_(value[k][0])

    params = property(lambda self: self._get("parameters"), lambda self, v: self._set("parameters", v))
    buffers = property(lambda self: self._get("buffers"), lambda self, v: self._set("buffers", v))

    def leaves(self) -> dict[str, torch.Tensor]:
        """The tensors the optimizer steps: the stacked leaves, or the module's own parameters."""
        return self._parameters if self.stacked else dict(self.net.named_parameters())

    # ------------------------------------------------------------------ shape and state
    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def to(self, device) -> "Population":
        if self.stacked:
            self._parameters = {k: v.detach().to(device).requires_grad_(True) for k, v in self._parameters.items()}
            self._buffers = {k: v.to(device) for k, v in self._buffers.items()}
        else:
            self.net.to(device)
        self.initial_buffers = {k: v.to(device) for k, v in self.initial_buffers.items()}
        self.template.to(device)
        return self

    def train(self, on: bool = True) -> None:
        self.base.train(on)

    def decayed(self) -> set[str]:
        """Names of the weight matrices / kernels (decayed by L2, as a separate run's optimizer: dim > 1)."""
        return {k for k, v in self.params.items() if v.dim() > 2}

    def state(self) -> dict[str, torch.Tensor]:
        """Persistent tensors of every replica (parameters, and buffers that a state_dict saves)."""
        keep = set(self.template.state_dict())
        out = {k: v.detach() for k, v in self.params.items()}
        out.update({k: v for k, v in self.buffers.items() if k in keep})
        return out

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state().items()}

    def select(self, rows: torch.Tensor) -> None:
        """Keep only replicas ``rows`` (stopped ones leave the stack): new leaf tensors."""
        if not self.stacked:
            if rows.tolist() != [0]:
                raise ValueError(f"a population of one cannot keep rows {rows.tolist()}")
            return
        self.params = {k: v.detach()[rows].clone().requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v[rows].clone() for k, v in self.buffers.items()}

    def with_state(self, state: dict[str, torch.Tensor]) -> "Population":
        """All S replicas (stopped ones included) holding ``state`` (a snapshot of every replica),
        for evaluation; the rates are the configured ones."""
        new = copy.copy(self)
        if not self.stacked:
            new.base = new.net = copy.deepcopy(self.template)
            new.net.load_state_dict({k: v[0] for k, v in state.items()}, strict=True)
            return new
        new._parameters = {k: state[k] for k in self._parameters}
        new._buffers = {k: state.get(k, v) for k, v in self.initial_buffers.items()}
        return new

    def module(self, state: dict[str, torch.Tensor], i: int) -> nn.Module:
        """Row ``i`` of ``state`` (a snapshot) as a plain module of the model (a separate run's network)."""
        net = self.template
        net.load_state_dict({k: v[i] for k, v in state.items()}, strict=True)
        return net

    # ------------------------------------------------------------------ forward
    def _call(self, p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (p, b), (x,))

    def _rows_call(self, x: torch.Tensor) -> torch.Tensor:
        """Rows mode: ``x`` [S, B, ...] folded to [S*B, ...], each rate buffer given per row. The
        stacked tensors are bound into the base module itself while this population's tensors are
        the ones it holds (functional_call's swapping in and out on every call cost ~15% of a step)."""
        S, B = x.shape[:2]
        if S != self.size:
            raise ValueError(f"rows mode got inputs for {S} replicas, the population has {self.size}")
        base, state = self.base, (self._parameters, self._buffers)
        bound = getattr(base, "_rows_bound", (None, None))
        if bound[0] is not state[0] or bound[1] is not state[1]:
            slots = dict(base.named_modules())
            for kind, tensors in (("_parameters", state[0]), ("_buffers", state[1])):
                for name, v in tensors.items():
                    owner, _, leaf = name.rpartition(".")
                    getattr(slots[owner], kind)[leaf] = v
            base._rows_bound = state
            base._rows_rates = [(slots[k.rpartition(".")[0]], k) for k in self.rate_buffers()]
        for layer, k in base._rows_rates:  # read on every call: schedules replace the rate tensors
            src = self._buffers[k]
            held = getattr(layer, "_rows_rate_of", None)
            # the per-row tensor is rebuilt only when the rates or the batch size change, so the noise
            # can keep its thresholds on it (layers._row_rate_plan); an in-place edit of either tensor
            # (a layer's `p` set on the base writes into the per-row one) rebuilds it too
            if held is None or held[0] is not src or held[1] != (B, src._version, held[2]._version):
                rows = src.repeat_interleave(B).unsqueeze(1)
                held = layer._rows_rate_of = (src, (B, src._version, rows._version), rows)
            layer._buffers["rate"] = held[2]
        out = base(x.reshape(S * B, *x.shape[2:]))
        return out.view(S, B, *out.shape[1:])

    def _replicas(self) -> list[tuple[dict, dict]]:
        """Loop mode: each replica's (params, buffers), views of its row of the stacked tensors (one
        ``unbind`` per tensor, so backward stacks the replicas' gradients in one op)."""
        rows = [{k: v.unbind(0) for k, v in d.items()} for d in (self.params, self.buffers)]
        return [tuple({k: v[i] for k, v in d.items()} for d in rows) for i in range(self.size)]

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits [S, B, C]; ``x`` is [S, B, ...] (each replica its batch) or, ``shared``, [B, ...]."""
        if not self.stacked:
            return self.net(x if shared else x[0]).unsqueeze(0)
        if self.rows:
            return self._rows_call(x.expand(self.size, *x.shape) if shared else x)
        if self.loop:
            return torch.stack([self._call(p, b, x if shared else x[i]) for i, (p, b) in enumerate(self._replicas())])
        return vmap(self._call, in_dims=(0, 0, None if shared else 0), randomness="different")(
            self.params, self.buffers, x)

    def losses(self, objective: Objective, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's ``objective(net_i, x_i, y_i)``: (losses [S], logits [S, B, C])."""
        def one(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor):
            return objective(partial(self._call, p, b), xb, yb)

        if not self.stacked:
            loss, logits = objective(self.net, x[0], y[0])
            return loss.unsqueeze(0), logits.unsqueeze(0)
        if self.rows:
            if objective is not cross_entropy:
                raise ValueError("rows mode computes plain cross-entropy: build the population with rows=False")
            logits = self._rows_call(x)
            # classes on dim 1 ([S, C, B]): log-softmax over a dim of 10 is ~2x slower when it is the
            # innermost one (measured fwd + bwd at S = 10, B = 100: 165 against 346 us)
            loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
            return loss, logits
        if self.loop:
            out = [objective(partial(self._call, p, b), x[i], y[i]) for i, (p, b) in enumerate(self._replicas())]
            return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
        return vmap(one, randomness="different")(self.params, self.buffers, x, y)

    # ------------------------------------------------------------------ per-replica hyperparameters
    def rate_buffers(self) -> list[str]:
        """Names of the dropout layers' per-replica rate buffers (``layers.DropoutLayer.rate``)."""
        return [k for k in self.buffers if k == "rate" or k.endswith(".rate")]

    def set_rates(self, base: dict[str, torch.Tensor], factor: torch.Tensor) -> None:
        """Dropout schedules: every rate buffer becomes ``base * factor`` (factor: [S], per replica).
        With S = 1 the module's layers read their float ``p``: it is set (which sets their rate too)."""
        if self.stacked:  # a new dict: rows mode rebinds what it holds
            self._buffers = {**self._buffers, **{k: v * factor.to(v) for k, v in base.items()}}
            return
        names = dict(self.net.named_modules())
        for k, v in base.items():
            names[k[: -len(".rate")] if k.endswith(".rate") else ""].p = float(v[0] * factor[0])

    @torch.no_grad()
    def max_norm_(self, c: torch.Tensor) -> None:
        """Max-norm (regularizers.constraints.max_norm_) with each replica's own bound ``c`` [S]: every
        unit's incoming weight vector (a row of a weight with dim >= 2) is rescaled to norm <= c_i,
        with torch.renorm's factor c / (norm + 1e-7)."""
        for k in self.decayed():
            w = self.params[k]
            norms = w.flatten(2).norm(dim=2)                           # [S, units]
            bound = c.to(w).view(-1, 1)
            factor = torch.where(norms > bound, bound / (norms + 1e-7), torch.ones_like(norms))
            w.mul_(factor.view(*factor.shape, *([1] * (w.dim() - 2))))

