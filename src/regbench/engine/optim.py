"""Adam and SGD over stacked parameters, with hyperparameters that differ per replica.

The population engine keeps S replicas' parameters stacked: a dict name -> leaf tensor of shape
[S, *the parameter's shape] (``torch.func.stack_module_state``). ``torch.optim`` takes one lr,
weight decay and momentum per param group, and a stacked tensor is one param, so it cannot give
replica i its own lr_i. This optimizer is the same update with those three as [S] vectors,
broadcast as [S, 1, ...]; row i of every tensor follows exactly what a separate
``torch.optim.Adam`` / ``SGD`` built as a separate run's (``benchmarks/parity.py``'s ``make_optimizer``) (coupled L2 on the weight
matrices, none on biases) does to replica i's parameters. With theta the row's parameter, g its
gradient, t its step count and lambda = wd if the parameter decays else 0:

    Adam (Kingma & Ba 2015, torch's default form):  g <- g + lambda theta;
        m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2;
        theta <- theta - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    SGD (momentum mu, dampening 0, no Nesterov):    g <- g + lambda theta;
        b <- g at the first step, else mu b + g;  theta <- theta - lr b

Each operation is the one torch.optim's single-tensor path uses (``addcmul`` with the per-replica
factor where torch uses ``alpha=``), so one replica matches torch.optim up to rounding of lr / wd
in float32 (exactly, in the tests). The per-step work is ``torch._foreach_*`` calls over all
tensors (on the CPU a C++ loop: one Python call per op, not per tensor), into reused scratch
buffers. ``benchmarks/bench_stacked_optim.py`` times it against torch.optim on the same stacked
tensors with one scalar lr: about torch.optim(foreach=True)'s cost, while torch.optim(fused=True)
is ~4x faster (S = 50 MLP, one thread), so when all replicas share lr, weight decay and momentum
(:func:`uniform`), the fused torch.optim is the better choice. Nothing mixes rows, so a replica that diverges poisons
no other; :meth:`keep` drops replicas (rows) from the parameters and every state tensor alike.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adam", "sgd")


def uniform(values: torch.Tensor) -> bool:
    """Whether every replica has the same value (then plain ``torch.optim`` on the stack will do)."""
    return bool((values == values.reshape(-1)[0]).all()) if values.numel() else True


class StackedOptimizer:
    """Adam or SGD over stacked parameters, per-replica hyperparameters; equals S separate torch.optim optimizers."""

    def __init__(self, params: dict[str, torch.Tensor], name: str, lr: torch.Tensor, weight_decay: torch.Tensor,
                 decay: set[str], momentum: torch.Tensor | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer name={name!r}: allowed are {', '.join(OPTIMIZERS)}")
        if name == "adam" and momentum is not None:
            raise ValueError("momentum is an SGD setting; Adam's are betas")
        unknown = set(decay) - set(params)
        if unknown:
            raise ValueError(f"decay names {sorted(unknown)} are not parameters ({sorted(params)})")
        self.name, self.decay, self.betas, self.eps = name, set(decay), betas, eps
        # float64: lr / (1 - b1^t) is then torch's Python-float quotient before its rounding to float32
        self.lr = lr.detach().to(torch.float64).clone()
        self.weight_decay = weight_decay.detach().to(torch.float64).clone()
        self.momentum = None if momentum is None else momentum.detach().to(torch.float64).clone()
        self.state: dict[str, dict[str, torch.Tensor | int]] = {}
        self._bind(params)

    def _bind(self, params: dict[str, torch.Tensor]) -> None:
        S = self.lr.shape[0]
        for what, v in (("weight_decay", self.weight_decay), ("momentum", self.momentum)):
            if v is not None and v.shape != (S,):
                raise ValueError(f"{what} has shape {tuple(v.shape)}, lr has ({S},): one value per replica")
        for n, p in params.items():
            if p.dim() == 0 or p.shape[0] != S:
                raise ValueError(f"parameter {n!r} has shape {tuple(p.shape)}: expected [S={S}, ...]")
        self.params = dict(params)
        self._scratch: dict[tuple[str, str], torch.Tensor] = {}

    def _row(self, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """[S] -> [S, 1, ...] in p's dtype, to broadcast over p."""
        return v.to(p.dtype).view(-1, *[1] * (p.dim() - 1))

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` (2-norm) of each replica's own gradients; the [S] total norms."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return torch.zeros(self.lr.shape[0])
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], 1)
        total = torch.linalg.vector_norm(norms, 2, dim=1)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [self._row(coef, g) for g in grads])
        return total

    def _buffer(self, key: str, name: str) -> torch.Tensor:
        """A reused scratch tensor shaped like parameter ``name``: allocating a fresh one per op and
        step costs more than the op on the CPU (large blocks are new zero pages every time)."""
        buf = self._scratch.get((key, name))
        if buf is None:
            buf = self._scratch[key, name] = torch.empty_like(self.params[name])
        return buf

    @torch.no_grad()
    def step(self) -> None:
        names = [n for n, p in self.params.items() if p.grad is not None]  # as torch.optim, skip grad None
        params = [self.params[n] for n in names]
        grads = [p.grad for p in params]
        for i, n in enumerate(names):  # into scratch: the .grad tensors stay the loss's gradients, as in torch.optim
            if n in self.decay:
                grads[i] = torch.addcmul(grads[i], self._row(self.weight_decay, params[i]), params[i],
                                         out=self._buffer("grad", n))
            self.state.setdefault(n, {"step": 0})["step"] += 1
        states = [self.state[n] for n in names]
        (self._adam if self.name == "adam" else self._sgd)(names, params, grads, states)

    def _adam(self, names: list, params: list, grads: list, states: list) -> None:
        b1, b2 = self.betas
        for s, p in zip(states, params):
            if "exp_avg" not in s:
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1 - b2)
        denom = [torch.sqrt(vi, out=self._buffer("denom", n)) for vi, n in zip(v, names)]
        torch._foreach_div_(denom, [(1 - b2 ** s["step"]) ** 0.5 for s in states])
        torch._foreach_add_(denom, self.eps)
        # theta + (-step_size * m) / denom: torch's addcdiv(m, denom, value=-step_size), step_size per row
        step_size = {t: -self.lr / (1 - b1 ** t) for t in {s["step"] for s in states}}
        scaled = [torch.mul(mi, self._row(step_size[s["step"]], p), out=self._buffer("grad", n))
                  for mi, s, p, n in zip(m, states, params, names)]  # the decayed grad is used up
        torch._foreach_addcdiv_(params, scaled, denom)

    def _sgd(self, names: list, params: list, grads: list, states: list) -> None:
        if self.momentum is not None:
            fresh = [i for i, s in enumerate(states) if "momentum_buffer" not in s]
            for i in fresh:
                states[i]["momentum_buffer"] = grads[i].clone()
            old = [i for i in range(len(states)) if i not in fresh]
            if old:
                bufs = [states[i]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, [self._row(self.momentum, params[i]) for i in old])
                torch._foreach_add_(bufs, [grads[i] for i in old])
            grads = [s["momentum_buffer"] for s in states]
        torch._foreach_addcmul_(params, grads, [self._row(-self.lr, p) for p in params])

    def keep(self, rows: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """The population now holds only replicas ``rows`` (indices in the old numbering), in the new
        leaf tensors ``params``: rebind to them and keep the same rows of every state tensor."""
        rows = rows.to(torch.long)
        self.lr, self.weight_decay = self.lr[rows], self.weight_decay[rows]
        if self.momentum is not None:
            self.momentum = self.momentum[rows]
        for s in self.state.values():
            for k, v in s.items():
                if torch.is_tensor(v):
                    s[k] = v[rows]
        self._bind(params)

    def state_dict(self) -> dict:
        """Tensors and plain dicts only, so ``torch.load(..., weights_only=True)`` reads it."""
        hyper = {"lr": self.lr.clone(), "weight_decay": self.weight_decay.clone()}
        if self.momentum is not None:
            hyper["momentum"] = self.momentum.clone()
        state = {n: {k: (v.clone() if torch.is_tensor(v) else torch.tensor(v)) for k, v in s.items()}
                 for n, s in self.state.items()}
        return {"hyper": hyper, "state": state}

    def load_state_dict(self, d: dict) -> None:
        if set(d["state"]) - set(self.params):
            raise ValueError(f"state for {sorted(set(d['state']) - set(self.params))}: not parameters here")
        if ("momentum" in d["hyper"]) != (self.momentum is not None):
            raise ValueError(f"state_dict momentum={'momentum' in d['hyper']}, this {self.name} optimizer "
                             f"has momentum={self.momentum is not None}")
        self.lr, self.weight_decay = d["hyper"]["lr"].clone(), d["hyper"]["weight_decay"].clone()
        self.momentum = d["hyper"]["momentum"].clone() if "momentum" in d["hyper"] else None
        self.state = {n: {k: (int(v) if k == "step" else v.clone().to(self.params[n].device))
                          for k, v in s.items()} for n, s in d["state"].items()}
        for n, s in self.state.items():
            for k, v in s.items():
                if torch.is_tensor(v) and v.shape != self.params[n].shape:
                    raise ValueError(f"state {n}.{k} has shape {tuple(v.shape)}, the parameter "
                                     f"{tuple(self.params[n].shape)}")
        self._bind(self.params)
