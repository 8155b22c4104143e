"""The training loop of a population: S >= 1 replicas, each with its own hyperparameters and its
own trackers (best epoch and weights, stopping criterion, divergence, history), one evaluation and
one record builder.

Per replica, as in a separate run of its config: its batch order (``epoch_order(n, seed, epoch)``),
its initial weights (its net), its dropout rates (buffers of its layers), learning rate, momentum,
weight decay, max-norm bound, dropout schedule, early-stopping criterion and whether it restores
its best weights. Shared by the population (they shape the computation): the model, the data, the
optimizer kind, the batch size, the epoch cap, the objective and MC-dropout testing.

A replica that stops early or diverges leaves the stack at the end of that epoch (its weights and
optimizer rows are dropped), so the others train on faster; the loop ends when none is left or at
``max_epochs``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from regbench.data.splits import DataSplits
from regbench.engine.population import NotStackable, Population
from regbench.regularizers import Regularization
from regbench.training.loop import cross_entropy, epoch_order

log = logging.getLogger("regbench")

HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")
# evaluation chunks are capped so that one [S, width, chunk] activation stays below this many floats
_EVAL_ELEMENTS = 1 << 25


@dataclass
class Replica:
    """One member of a population: what a separate run of its config would be given."""
    seed: int
    reg: Regularization
    lr: float
    momentum: float = 0.0
    label: str = ""
    logger: Any = None          # a Lightning logger for its curves (log_metrics(dict, step)), or None


@dataclass
class _Tracker:
    """Per-replica state: best epoch and weights, the stopping criterion's state, divergence, history."""
    monitor: str
    mode: str
    restore: bool
    stopping: Any = None           # a fresh copy of the arm's Stopping (its criterion, monitor, mode), or None
    best_value: float = math.nan
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    stop_reason: str | None = None
    diverged_epoch: int | None = None
    steps: int = 0
    history: dict = field(default_factory=lambda: {"epoch": [], **{k: [] for k in HISTORY_KEYS}})

    @property
    def criterion(self):
        return self.stopping.criterion if self.stopping is not None else None

    def better(self, v: float) -> bool:
        if not _finite(v):
            return False
        if self.best_epoch is None:
            return True
        return v < self.best_value if self.mode == "min" else v > self.best_value


def _finite(v: float) -> bool:
    return v == v and abs(v) != math.inf


def _tracker(reg: Regularization) -> _Tracker:
    t = _Tracker(monitor=reg.monitor, mode=reg.mode, restore=reg.restore_best)
    if reg.stopping is not None:
        t.stopping = copy.deepcopy(reg.stopping)  # each replica its own criterion state
        t.criterion.reset()
    return t


def _shared(replicas: Sequence[Replica]) -> None:
    """Refuse a population whose members differ where one stacked computation cannot."""
    first = replicas[0].reg
    for r in replicas[1:]:
        if _objective_key(r.reg.objective) != _objective_key(first.objective):
            raise NotStackable("replicas with different training objectives (R-Drop alpha) cannot share a population")
        if r.reg.mc_samples != first.mc_samples:
            raise NotStackable("replicas with different mc_samples cannot share a population")


def _objective_key(objective: Callable) -> tuple:
    return (getattr(objective, "func", objective), getattr(objective, "args", ()),
            tuple(sorted(getattr(objective, "keywords", {}).items())))


def _vector(values: Sequence[float], device) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def make_optimizer(pop: Population, name: str, lr: Sequence[float], weight_decay: Sequence[float],
                   momentum: Sequence[float], fused: bool = True):
    """The population's optimizer. Replicas that share lr, weight decay and momentum get torch's own
    Adam / SGD on the stacked tensors (elementwise, so each row is its replica's separate optimizer;
    fused, ~4x faster per step than the per-replica one at S = 50, benchmarks/bench_stacked_optim.py);
    otherwise engine/optim.py's StackedOptimizer with [S] vectors (float64, so each replica's lr is
    the float its config gives, not float32's nearest).

    ``fused=False``: torch's default implementation even for a stacked population, which rounds as a
    plain loop does (tests of exactness use it; the fused kernel computes the same update with other
    roundings, which Adam amplifies: on an AMD EPYC host a replica's epoch loss parted from its plain
    loop's by 1.6e-4 one epoch in, while the unfused one stayed within 4e-7)."""
    from regbench.engine.optim import StackedOptimizer

    if name not in ("adam", "sgd"):
        raise NotStackable(f"optimizer {name!r} is not stacked (adam, sgd)")
    if len(set(lr)) == 1 and len(set(weight_decay)) == 1 and (name == "adam" or len(set(momentum)) == 1):
        return SharedOptimizer(pop.leaves(), name, float(lr[0]), float(weight_decay[0]), pop.decayed(),
                               float(momentum[0]), stacked=pop.stacked, fused=fused)
    device = pop.device
    vec = lambda v: torch.tensor([float(x) for x in v], dtype=torch.float64, device=device)  # noqa: E731
    return StackedOptimizer(pop.leaves(), name, lr=vec(lr), weight_decay=vec(weight_decay), decay=pop.decayed(),
                            momentum=vec(momentum) if name == "sgd" else None)


class SharedOptimizer:
    """torch.optim (fused when the device has the kernel) over stacked tensors, for replicas that share
    their optimizer hyperparameters; the same small interface as StackedOptimizer."""

    def __init__(self, params: dict[str, torch.Tensor], name: str, lr: float, weight_decay: float,
                 decay: set[str], momentum: float, stacked: bool = True, fused: bool = True):
        self.name, self.lr, self.weight_decay, self.decay, self.momentum = name, lr, weight_decay, decay, momentum
        self.stacked = stacked  # False: the parameters are one module's own (a population of one)
        self.fused = fused and stacked
        self.opt = self._build(params)

    def _build(self, params: dict[str, torch.Tensor]):
        self.names = list(params)
        groups = [{"params": [params[k] for k in self.names if k in self.decay], "weight_decay": self.weight_decay},
                  {"params": [params[k] for k in self.names if k not in self.decay], "weight_decay": 0.0}]
        make = (lambda **kw: torch.optim.Adam(groups, lr=self.lr, **kw)) if self.name == "adam" else (
            lambda **kw: torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, **kw))
        if not self.fused:
            # a population of one (an ordinary run), or fused=False: torch's default implementation, the plain
            # loop's own, so its trajectory stays equal to a plain PyTorch loop's (the fused kernel rounds
            # differently, and Adam amplifies last-bit differences until the losses part by 1e-3 and more)
            return make()
        try:
            return make(fused=True)  # one pass per tensor instead of ~10; the same update up to rounding
        except (RuntimeError, ValueError, TypeError):  # a device or torch without fused kernels
            self.fused = False
            return make()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.opt.step()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        params = [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad if self.stacked else p.grad.unsqueeze(0) for p in params]   # [S, ...] each
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # [S]
        factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))
        return norms

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)

    def keep(self, rows: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        old = self.opt
        old_params = [p for g in old.param_groups for p in g["params"]]
        self.opt = self._build(params)
        for p_old, p_new in zip(old_params, [p for g in self.opt.param_groups for p in g["params"]]):
            state = old.state.get(p_old)
            if state:
                self.opt.state[p_new] = {k: (v[rows].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                                         for k, v in state.items()}


# ------------------------------------------------------------------------------ one epoch, evaluation
def train_epoch(pop: Population, opt, objective, x: torch.Tensor, y: torch.Tensor, orders: torch.Tensor,
                batch_size: int, maxnorm: torch.Tensor | None, clip: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over each replica's ``orders[i]`` in mini-batches: (mean loss [S], accuracy [S], steps),
    running values in training mode, as ``training.loop.train_epoch`` for each replica."""
    S = orders.shape[0]
    pop.train(True)
    losses, preds, sizes = [], [], []
    for idx in orders.split(batch_size, dim=1):
        flat = idx.reshape(-1)
        xb = x.index_select(0, flat).view(S, idx.shape[1], *x.shape[1:])
        yb = y.index_select(0, flat).view(S, idx.shape[1])
        loss, logits = pop.losses(objective, xb, yb)          # [S], [S, B, C]
        opt.zero_grad()
        loss.sum().backward()   # d/d theta_i of the sum = d loss_i / d theta_i
        if clip:
            opt.clip_grad_norm_(clip)
        opt.step()
        if maxnorm is not None:
            pop.max_norm_(maxnorm)
        # per step only keep references: the epoch's metrics are computed once, at its end
        losses.append(loss.detach())
        preds.append(logits.detach())
        sizes.append(idx.shape[1])
    w = torch.tensor(sizes, device=x.device, dtype=torch.float32)
    mean_loss = (torch.stack(losses, 1) * w).sum(1) / w.sum()
    acc = (torch.cat(preds, 1).argmax(-1) == y[orders]).float().mean(1)
    return mean_loss, acc, len(sizes)


@torch.no_grad()
def evaluate(pop: Population, x: torch.Tensor, y: torch.Tensor, chunk: int, mc_samples: int = 0
             ) -> dict[str, torch.Tensor]:
    """``training.loop.evaluate`` for every replica on one shared (x, y): loss [S], acc [S] (and the
    mean predictive entropy with MC dropout), in eval mode."""
    S = pop.size
    pop.train(False)
    if mc_samples:
        from regbench.regularizers.layers import set_mc_dropout

        if set_mc_dropout(pop.base, True) == 0:
            raise ValueError("mc_samples > 0 but the network has no regbench dropout layer to keep on at test time")
    loss = torch.zeros(S, dtype=torch.float64, device=x.device)
    correct = torch.zeros_like(loss)
    entropy = torch.zeros_like(loss)
    try:
        for xb, yb in zip(x.split(chunk), y.split(chunk)):
            ys = yb.unsqueeze(0).expand(S, -1)
            if mc_samples:
                probs = torch.stack([F.softmax(pop.forward(xb, shared=True), -1) for _ in range(mc_samples)]).mean(0)
                logp = probs.clamp_min(1e-12).log()
                entropy += (-(probs * logp).sum(-1)).sum(1).double()
            else:
                logp = F.log_softmax(pop.forward(xb, shared=True), -1)
            loss += F.nll_loss(logp.transpose(1, 2), ys, reduction="none").sum(1).double()
            correct += (logp.argmax(-1) == ys).sum(1).double()
    finally:
        if mc_samples:
            set_mc_dropout(pop.base, False)
        pop.train(True)
    out = {"loss": loss / len(y), "acc": correct / len(y)}
    if mc_samples:
        out["entropy"] = entropy / len(y)
    return out


# ------------------------------------------------------------------------------ the loop
class Training:
    """The population's training, one epoch at a time (``run_epoch``), so that a driver (the
    LightningModule of engine/module.py, or ``fit`` below) runs the epochs; ``finish`` evaluates
    and builds the records. ``state_dict`` / ``load_state_dict`` make it resumable.

    ``reseed``: draw the population's noise from a stream seeded by its members (S > 1); a
    population of one keeps the global generator, which ``seed_everything`` seeded for its run.
    ``rows``: rows mode where the model allows it; ``loop``: loop mode for models with convolutions
    (False for both: vmap; tests compare them).
    ``fused``: the fused optimizer kernel for stacked replicas (False: torch's default, rounding as a
    plain loop does; ``make_optimizer``).
    """

    def __init__(self, nets: list[torch.nn.Module], replicas: Sequence[Replica], data: DataSplits, *,
                 optim_name: str, batch_size: int, max_epochs: int, eval_batch_size: int,
                 clip: float | None = None, label: str = "population", reseed: bool | None = None,
                 rows: bool = True, loop: bool = True, fused: bool = True):
        t0 = time.perf_counter()
        self.replicas, self.data, self.label = list(replicas), data, label
        self.batch_size, self.max_epochs, self.eval_batch_size, self.clip = batch_size, max_epochs, eval_batch_size, clip
        S = len(self.replicas)
        _shared(self.replicas)
        self.device = device = data.x_train.device
        regs = [r.reg for r in self.replicas]
        self.objective, self.mc_samples = regs[0].objective, regs[0].mc_samples
        self.pop = Population(nets, rows=rows and self.objective is cross_entropy, loop=loop).to(device)
        self.trackers = [_tracker(reg) for reg in regs]
        if reseed if reseed is not None else S > 1:
            torch.manual_seed(zlib.crc32(("population:" + ",".join(f"{r.seed}/{r.label}" for r in replicas)).encode()))
        bounds = [reg.max_norm for reg in regs]
        self.maxnorm = _vector([math.inf if c is None else c for c in bounds], device) if any(
            c is not None for c in bounds) else None
        self.schedules = [reg.schedule for reg in regs]
        self.base_rates = {k: v.clone() for k, v in self.pop.buffers.items() if k in self.pop.rate_buffers()}
        if self.maxnorm is not None:
            self.pop.max_norm_(self.maxnorm)  # max-norm also projects the initial weights
        self.opt = make_optimizer(self.pop, optim_name, [r.lr for r in replicas], [reg.weight_decay for reg in regs],
                                  [r.momentum for r in replicas], fused=fused)
        self.final = self.pop.snapshot()                                   # every replica's last weights
        self.best = self.pop.snapshot() if any(t.restore for t in self.trackers) else None
        self.active = list(range(S))                                       # population row j is replica active[j]
        self.epochs_run = 0
        self.train_seconds = 0.0
        self.setup_seconds = time.perf_counter() - t0

    @property
    def done(self) -> bool:
        return not self.active or self.epochs_run >= self.max_epochs

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train every active replica one epoch, validate, update its trackers (logging its curves);
        replicas that stopped or diverged leave. Returns the epoch's mean metrics over the replicas
        that trained it (what a progress bar shows)."""
        t1 = time.perf_counter()
        pop, device, active = self.pop, self.device, self.active
        data = self.data
        if any(self.schedules):
            factor = [s.factor(epoch) if s else 1.0 for s in (self.schedules[i] for i in active)]
            rows = torch.tensor(active, device=device)
            pop.set_rates({k: v[rows] for k, v in self.base_rates.items()}, _vector(factor, device))
        orders = torch.stack([epoch_order(len(data.y_train), self.replicas[i].seed, epoch) for i in active]).to(device)
        maxnorm = self.maxnorm[torch.tensor(active, device=device)] if self.maxnorm is not None else None
        tr_loss, tr_acc, n_steps = train_epoch(pop, self.opt, self.objective, data.x_train, data.y_train, orders,
                                               self.batch_size, maxnorm, self.clip)
        val = evaluate(pop, data.x_val, data.y_val, min(self.eval_batch_size, _eval_chunk(len(active))))
        tl, ta, vl, va = (t.tolist() for t in (tr_loss, tr_acc, val["loss"], val["acc"]))  # one sync per epoch
        improved, leaving = [], []
        for j, i in enumerate(active):
            t = self.trackers[i]
            t.steps += n_steps
            row = {"train/loss": tl[j], "train/acc": ta[j], "val/loss": vl[j], "val/acc": va[j]}
            t.history["epoch"].append(epoch)
            for k in HISTORY_KEYS:
                t.history[k].append(row[k])
            if self.replicas[i].logger is not None:
                self.replicas[i].logger.log_metrics(row, step=epoch)
            if t.better(row[t.monitor]):
                t.best_value, t.best_epoch = row[t.monitor], epoch
                improved.append(j)
            fired = False
            if t.criterion is not None:
                fired = t.criterion.update(t.stopping.error(row[t.stopping.monitor]), row["train/loss"])
                if fired and t.stopped_epoch is None:
                    t.stopped_epoch, t.stop_reason = epoch, t.criterion.reason
            if not _finite(tl[j]):
                t.diverged_epoch = epoch
                log.warning("%s: training loss is %s at epoch %d: stopping %s as diverged", self.label, tl[j], epoch,
                            self.replicas[i].label or f"seed {self.replicas[i].seed}")
            if fired or t.diverged_epoch is not None:
                leaving.append(j)
        self.epochs_run = epoch + 1
        last = self.epochs_run >= self.max_epochs
        state = pop.state()
        with torch.no_grad():
            if self.best is not None and improved:
                src = torch.tensor(improved, device=device)
                dst = torch.tensor([active[j] for j in improved], device=device)
                for k, v in state.items():
                    self.best[k][dst] = v[src]
            out = list(range(len(active))) if last else leaving
            if out:
                src = torch.tensor(out, device=device)
                dst = torch.tensor([active[j] for j in out], device=device)
                for k, v in state.items():
                    self.final[k][dst] = v[src]
        means = {"train/loss": _mean(tl), "train/acc": _mean(ta), "val/loss": _mean(vl), "val/acc": _mean(va)}
        if leaving:
            keep_rows = [j for j in range(len(active)) if j not in set(leaving)]
            if keep_rows and not last:
                keep = torch.tensor(keep_rows, device=device)
                pop.select(keep)
                self.opt.keep(keep, pop.leaves())
            self.active = [active[j] for j in keep_rows]
        self.train_seconds += time.perf_counter() - t1
        return means

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed training needs (tensors and plain values: torch.load(weights_only=True))."""
        return {"params": {k: v.detach().clone() for k, v in self.pop.params.items()},
                "buffers": {k: v.clone() for k, v in self.pop.buffers.items()},
                "optimizer": self.opt.state_dict(), "final": self.final, "best": self.best,
                "active": list(self.active), "epochs_run": self.epochs_run, "train_seconds": self.train_seconds,
                "trackers": [_tracker_state(t) for t in self.trackers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        active = list(state["active"])
        rows = torch.tensor(active, device=self.device, dtype=torch.long)
        self.pop.select(rows)  # the population as it was: the replicas still training
        if self.pop.stacked:
            self.pop.params = {k: v.to(self.device).clone().requires_grad_(True) for k, v in state["params"].items()}
        else:
            self.pop.params = state["params"]  # copied into the module's own parameters
        self.pop.buffers = {k: v.to(self.device) for k, v in state["buffers"].items()}
        self.opt.keep(rows, self.pop.leaves())
        self.opt.load_state_dict(state["optimizer"])
        self.final, self.best = state["final"], state["best"]
        self.active, self.epochs_run, self.train_seconds = active, state["epochs_run"], state["train_seconds"]
        for t, s in zip(self.trackers, state["trackers"]):
            _load_tracker(t, s)

    # -------------------------------------------------------------- the end
    def finish(self) -> tuple[list[dict[str, Any]], Population, dict[str, torch.Tensor]]:
        """Score every replica on its restored best (early-stopping arms) or final weights; one record
        dict per replica (the measured fields of a run's record), the scored population, and the
        state each replica is scored with (``pop.module(state, i)`` is replica i as a plain module)."""
        import regbench

        S, device, data = len(self.replicas), self.device, self.data
        restored = [t.restore and t.best_epoch is not None for t in self.trackers]
        best = self.best
        end = {k: torch.where(torch.tensor(restored, device=device).view(-1, *([1] * (v.dim() - 1))), best[k], v)
               if best is not None else v for k, v in self.final.items()}
        scored = self.pop.with_state(end)
        chunk = min(self.eval_batch_size, _eval_chunk(S))
        splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
                  "test": (data.x_test, data.y_test)}
        finals = {s: {m: v.tolist() for m, v in evaluate(scored, x, y, chunk, self.mc_samples).items()}
                  for s, (x, y) in splits.items()}
        records = []
        for i, t in enumerate(self.trackers):
            metrics = {f"{s}/{m}": finals[s][m][i] for s in ("train", "val", "test") for m in ("acc", "loss")}
            h = t.history
            finite_val = [(l, a) for l, a in zip(h["val/loss"], h["val/acc"]) if l == l]
            metrics["best_val/loss"] = min((l for l, _ in finite_val), default=float("nan"))
            metrics["best_val/acc"] = max((a for _, a in finite_val), default=float("nan"))
            diverged = t.diverged_epoch is not None or not all(map(_finite, metrics.values()))
            extra: dict[str, Any] = {
                "import_seconds": regbench.startup_seconds(), "setup_seconds": self.setup_seconds / S,
                "device": device.type, "resumed": False, "pid": os.getpid(), "threads": torch.get_num_threads(),
                "parameters": sum(v[0].numel() for v in self.pop.params.values())}
            if S > 1:  # a separate run's record (S = 1) has no engine keys, as before populations
                extra.update(engine="population", replicas=S, replica_index=i,
                             population_train_seconds=self.train_seconds)
            if self.mc_samples:
                extra["mc_entropy_test"] = finals["test"]["entropy"][i]
            records.append({
                "status": "diverged" if diverged else "ok",
                "metrics": metrics,
                "best_epoch": t.best_epoch,
                "epochs_trained": len(h["epoch"]),
                "stopped_early": t.stopped_epoch is not None,
                "stopped_epoch": t.stopped_epoch,
                "stop_reason": t.stop_reason if t.stopped_epoch is not None else None,
                "restored_best": restored[i],
                "steps": t.steps,
                "train_seconds": self.train_seconds / S,
                "history": h,
                "diverged_epoch": t.diverged_epoch,
                "error": (None if not diverged else f"loss became non-finite at epoch {t.diverged_epoch}"
                          if t.diverged_epoch is not None else "a final metric is non-finite"),
                "extra": extra,
            })
        return records, scored, end


def fit(nets: list[torch.nn.Module], replicas: Sequence[Replica], data: DataSplits, *,
        progress: Callable[[int, int, int, float], None] | None = None, **kwargs
        ) -> tuple[list[dict[str, Any]], Population, dict[str, torch.Tensor]]:
    """``Training`` driven by a plain loop (no Lightning): tests and benchmarks. ``progress(epoch,
    max_epochs, active, mean_val_acc)`` is called after every epoch."""
    t = Training(nets, replicas, data, **kwargs)
    while not t.done:
        active = len(t.active)
        means = t.run_epoch(t.epochs_run)
        if progress is not None:
            progress(t.epochs_run, t.max_epochs, active, means["val/acc"])
    return t.finish()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


_TRACKER_FIELDS = ("best_value", "best_epoch", "stopped_epoch", "stop_reason", "diverged_epoch", "steps", "history")


def _tracker_state(t: _Tracker) -> dict[str, Any]:
    out = {k: getattr(t, k) for k in _TRACKER_FIELDS}
    out["criterion"] = t.criterion.state_dict() if t.criterion is not None else None
    return out


def _load_tracker(t: _Tracker, state: dict[str, Any]) -> None:
    for k in _TRACKER_FIELDS:
        setattr(t, k, state[k])
    if t.criterion is not None and state["criterion"] is not None:
        t.criterion.load_state_dict(state["criterion"])


def _eval_chunk(S: int, widest: int = 1024) -> int:
    return max(1, _EVAL_ELEMENTS // (S * widest))
