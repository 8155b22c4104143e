"""Early-stopping criteria as plain Python objects (no Lightning), one ``update`` per epoch.

Each criterion is fed, once per epoch, the validation quantity to MINIMISE (a loss or an
error rate, ``val``) and the epoch's training loss (``train``), and answers whether to stop::

    crit = GL(alpha=5)
    for epoch in ...:
        if crit.update(val_loss, train_loss):
            print(crit.reason)      # e.g. "GL_5: GL=5.7 > 5 at epoch 22"
            break

Conventions shared by all criteria:

* ``t`` counts the calls to ``update`` from 1 (Prechelt's numbering, in the formulas and
  ``self.epoch``); the reasons name epochs 0-based (update t is epoch t-1), the base of
  Lightning's ``current_epoch`` and of the record's ``best_epoch`` and ``stopped_epoch``.
* ``describe_as(monitor, shown)`` makes the reasons name the monitored metric and show its
  values as they are (``shown`` maps the minimised quantity back, e.g. ``1 - error`` for an
  accuracy); :class:`~regbench.regularizers.early_stopping.Stopping` sets it.
* a non-finite ``val`` (NaN, inf: a diverged run) stops at once, like Lightning's
  ``EarlyStopping(check_finite=True)``.
* once a criterion has fired it keeps returning True (``stopped``) and keeps its reason.
* the state is plain Python numbers and lists (``state_dict`` / ``load_state_dict``), so a
  checkpoint can carry it.

Prechelt's criteria (L. Prechelt, "Early stopping -- but when?", in Neural Networks:
Tricks of the Trade, 1998) need a positive validation error: GL and PQ are ratios.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Criterion", "Patience", "GL", "PQ", "UP"]


def _require(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class Criterion:
    """Base class: bookkeeping shared by every criterion.

    Subclasses implement ``_step(val, train) -> str | None`` (a reason to stop, or None)
    and list their mutable state in ``_state``.
    """

    #: whether ``update`` needs the training loss (only PQ does)
    needs_train: bool = False
    #: names of the attributes that make up the criterion's state (besides the base ones)
    _state: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.monitor = "validation quantity"
        self.shown = None  # maps the minimised quantity to the monitored value (None: the same)
        self.reset()

    def describe_as(self, monitor: str, shown=None) -> None:
        """Name `monitor` in the reasons and show its values through `shown` (a picklable function)."""
        self.monitor, self.shown = monitor, shown

    def _show(self, v: float) -> str:
        return _fmt(self.shown(v) if self.shown is not None else v)

    # -- public API -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all history (a fresh run)."""
        self.epoch = 0
        self.stopped = False
        self.reason = ""
        #: the quantities computed at the last update (e.g. {"GL": 5.7}), for logging
        self.quantities: dict[str, float] = {}
        self._reset()

    def update(self, val: float, train: float | None = None) -> bool:
        """Record one epoch; return True if training should stop (and set ``reason``)."""
        val = float(val)
        if train is not None:
            train = float(train)
        elif self.needs_train:
            raise ValueError(f"{self!r} needs the training loss: call update(val, train)")
        if self.stopped:
            return True
        self.epoch += 1
        if not math.isfinite(val):
            reason: str | None = f"{self.label}: {self.monitor} {val} is not finite at epoch {self.epoch - 1}"
        else:
            reason = self._step(val, train)
        if reason is not None:
            self.stopped = True
            self.reason = reason
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        keys = ("epoch", "stopped", "reason", "quantities") + self._state
        state = {k: getattr(self, k) for k in keys}
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = ("epoch", "stopped", "reason", "quantities") + self._state
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"{self!r}: state_dict lacks {missing}")
        for k in keys:
            v = state[k]
            setattr(self, k, list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)

    @property
    def label(self) -> str:
        """Short name used in reasons, e.g. ``GL_5``."""
        return type(self).__name__

    # -- for subclasses -----------------------------------------------------------------

    def _reset(self) -> None:
        pass

    def _step(self, val: float, train: float | None) -> str | None:
        raise NotImplementedError


def _check_nonnegative(val: float, label: str, what: str) -> None:
    if val < 0:
        raise ValueError(
            f"{label}: {what}={val} is negative; Prechelt's criteria are ratios of errors or losses, "
            f"which must be >= 0 (monitor a loss or an error rate, not e.g. a log-likelihood)"
        )


def _generalization_loss(val: float, e_opt: float) -> float:
    """GL = 100 (E_va / E_opt - 1); 0 when both are 0, inf when only E_opt is."""
    if e_opt == 0.0:
        return 0.0 if val == 0.0 else math.inf
    return 100.0 * (val / e_opt - 1.0)


class Patience(Criterion):
    """Stop after ``patience`` epochs without improvement (Lightning ``EarlyStopping`` semantics).

    With ``best(t) = min over improving epochs``: epoch t improves iff
    ``E_va(t) < best - min_delta``; then ``best = E_va(t)`` and ``wait = 0``, else
    ``wait += 1``. Stop at the first t with ``wait >= patience``. The first epoch always
    improves (best starts at +inf). ``patience=0`` stops at the first non-improving epoch.
    """

    _state = ("best", "best_epoch", "wait")

    def __init__(self, patience: int = 10, min_delta: float = 0.0):
        _require(_is_int(patience) and patience >= 0, "patience", patience, "an integer >= 0")
        _require(_is_finite_number(min_delta) and min_delta >= 0,
                 "min_delta", min_delta, "a finite number >= 0")
        self.patience = patience
        self.min_delta = float(min_delta)
        super().__init__()

    def __repr__(self) -> str:
        return f"Patience(patience={self.patience}, min_delta={self.min_delta:g})"

    @property
    def label(self) -> str:
        return f"Patience_{self.patience}"

    def _reset(self) -> None:
        self.best = math.inf
        self.best_epoch = 0
        self.wait = 0

    def _step(self, val: float, train: float | None) -> str | None:
        improved = val < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.wait = val, self.epoch, 0
        else:
            self.wait += 1
        self.quantities = {"wait": float(self.wait), "best": self.best}
        # as in Lightning, only a non-improving epoch can stop (matters for patience=0)
        if not improved and self.wait >= self.patience:
            return (f"{self.label}: {self.monitor} did not improve by more than {self.min_delta:g} on its best "
                    f"{self._show(self.best)} (epoch {self.best_epoch - 1}) for {self.wait} epochs; "
                    f"stopped at epoch {self.epoch - 1}")
        return None


class GL(Criterion):
    """Prechelt's GL_alpha: stop as soon as the generalization loss exceeds alpha.

    ``E_opt(t) = min_{t' <= t} E_va(t')`` and ``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)``,
    the relative increase (in percent) of the validation error over its minimum so far.
    Stop at the first t with ``GL(t) > alpha``.
    """

    _state = ("e_opt",)

    def __init__(self, alpha: float = 5.0):
        _require(_is_finite_number(alpha) and alpha >= 0,
                 "alpha", alpha, "a finite number >= 0 (a percentage, e.g. 1 to 5)")
        self.alpha = float(alpha)
        super().__init__()

    def __repr__(self) -> str:
        return f"GL(alpha={self.alpha:g})"

    @property
    def label(self) -> str:
        return f"GL_{self.alpha:g}"

    def _reset(self) -> None:
        self.e_opt = math.inf

    def _step(self, val: float, train: float | None) -> str | None:
        _check_nonnegative(val, self.label, "validation error")
        self.e_opt = min(self.e_opt, val)
        gl = _generalization_loss(val, self.e_opt)
        self.quantities = {"GL": gl}
        if gl > self.alpha:
            return f"{self.label}: GL={_fmt(gl)} > {self.alpha:g} at epoch {self.epoch - 1}"
        return None


class PQ(Criterion):
    """Prechelt's PQ_alpha: stop when generalization loss / training progress exceeds alpha.

    A training strip of length k is epochs ``n+1 .. n+k`` with n divisible by k. The
    training progress at the end of a strip is
    ``P_k(t) = 1000 * (sum_{t'=t-k+1..t} E_tr(t') / (k * min_{t'=t-k+1..t} E_tr(t')) - 1)``
    (how much larger, in per mille, the strip's mean training loss is than its minimum:
    large while training still makes progress, ~0 once it has converged). Stop at the
    first strip end (t divisible by k) with ``GL(t) / P_k(t) > alpha``; GL(t) uses the
    minimum of E_va over all epochs so far, not just strip ends. If ``P_k = 0`` the
    quotient is taken as +inf when GL > 0 and 0 when GL = 0.
    """

    needs_train = True
    _state = ("e_opt", "strip")

    def __init__(self, alpha: float = 0.5, k: int = 5):
        _require(_is_finite_number(alpha) and alpha >= 0,
                 "alpha", alpha, "a finite number >= 0 (e.g. 0.5 to 3)")
        _require(_is_int(k) and k >= 2, "k", k, "an integer >= 2 (the strip length; P_k is 0 for k = 1)")
        self.alpha = float(alpha)
        self.k = k
        super().__init__()

    def __repr__(self) -> str:
        return f"PQ(alpha={self.alpha:g}, k={self.k})"

    @property
    def label(self) -> str:
        return f"PQ_{self.alpha:g}"

    def _reset(self) -> None:
        self.e_opt = math.inf
        self.strip: list[float] = []

    def _step(self, val: float, train: float | None) -> str | None:
        assert train is not None  # enforced by update() through needs_train
        _check_nonnegative(val, self.label, "validation error")
        if not math.isfinite(train):
            return f"{self.label}: training loss {train} is not finite at epoch {self.epoch - 1}"
        _check_nonnegative(train, self.label, "training loss")
        self.e_opt = min(self.e_opt, val)
        self.strip.append(train)
        if self.epoch % self.k:
            return None
        strip, self.strip = self.strip, []
        gl = _generalization_loss(val, self.e_opt)
        lowest = min(strip)
        if lowest == 0.0:
            progress = 0.0 if sum(strip) == 0.0 else math.inf
        else:
            progress = 1000.0 * (sum(strip) / (self.k * lowest) - 1.0)
        if progress == 0.0:
            pq = math.inf if gl > 0 else 0.0
        else:
            pq = gl / progress
        self.quantities = {"GL": gl, f"P_{self.k}": progress, "PQ": pq}
        if pq > self.alpha:
            return (f"{self.label}: GL/P_{self.k} = {_fmt(gl)}/{_fmt(progress)} = {_fmt(pq)} > {self.alpha:g} "
                    f"at epoch {self.epoch - 1}")
        return None


class UP(Criterion):
    """Prechelt's UP_s: stop when the validation error rose in s successive strips.

    Checked at strip ends only (t divisible by k): UP_1 stops at the first strip end t
    with ``E_va(t) > E_va(t - k)``; UP_s stops at strip end t iff UP_{s-1} would have
    stopped at t - k and ``E_va(t) > E_va(t - k)``, i.e. the error at the end of a strip
    exceeded the one at the end of the previous strip s times in a row. The first strip
    end has nothing to compare with.
    """

    _state = ("last_strip_val", "rises", "history")

    def __init__(self, s: int = 3, k: int = 5):
        _require(_is_int(s) and s >= 1, "s", s, "an integer >= 1 (number of successive strips)")
        _require(_is_int(k) and k >= 1, "k", k, "an integer >= 1 (the strip length)")
        self.s = s
        self.k = k
        super().__init__()

    def __repr__(self) -> str:
        return f"UP(s={self.s}, k={self.k})"

    @property
    def label(self) -> str:
        return f"UP_{self.s}"

    def _reset(self) -> None:
        self.last_strip_val: float | None = None
        self.rises = 0
        self.history: list[float] = []  # E_va at the strip ends of the current run of rises

    def _step(self, val: float, train: float | None) -> str | None:
        if self.epoch % self.k:
            return None
        if self.last_strip_val is not None and val > self.last_strip_val:
            self.rises += 1
            self.history.append(val)
        else:
            self.rises = 0
            self.history = [val]
        self.last_strip_val = val
        self.quantities = {"rises": float(self.rises)}
        if self.rises >= self.s:
            chain = " < ".join(_fmt(v) for v in self.history[-(self.s + 1):])
            return (f"{self.label}: validation error rose in {self.rises} successive strips of {self.k} "
                    f"({chain}) at epoch {self.epoch - 1}")
        return None
