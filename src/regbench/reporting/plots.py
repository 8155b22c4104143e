"""The report's figures: learning curves, confidence intervals, generalization gap.

Figures are built with matplotlib's object API (no pyplot state, safe inside Hydra callbacks) under
matplotlib's default style, and saved as PNG (200 dpi) and PDF (vector, for papers) without the
"Software" / creation-date metadata, so the bytes depend only on the records (and the matplotlib /
FreeType versions). Panels are named by their setting (`mnist1d/mlp, n=500`: the config keys that set
a group apart from the others of its data/model), titles wrap to the figure's width, accuracy axes
stay in [0, 1] and loss bands never go below 0.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy import stats as sps

from regbench.atomic import write_atomic
from regbench.reporting.collect import comparable_config, differing_keys
from regbench.reporting.tables import ordered_arms, tag

DPI = 200
FORMATS = ("png", "pdf")
_NO_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
# short names of the config keys that usually tell the settings of one data/model apart
SHORT = {"data.train_size": "n", "trainer.max_epochs": "epochs", "data.resize": "size", "optim.lr": "lr",
         "optim.batch_size": "batch"}


def _save(fig: Figure, path: Path) -> list[Path]:
    """`path` as PNG and, beside it, the same figure as PDF."""
    out = []
    for fmt in FORMATS:
        p = path.with_suffix(f".{fmt}")
        # atomically: a kill while drawing leaves the previous file, never a cut one
        write_atomic(p, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=DPI, metadata=_NO_METADATA[fmt]))
        out.append(p)
    return out


def _title(fig: Figure, text: str, fontsize: float = 9) -> None:
    """A figure title wrapped to the figure's width (a long one was clipped on narrow figures)."""
    chars = max(40, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    lines = [textwrap.fill(part, chars) for part in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _bound(ax, low: float | None, high: float | None, axis: str = "y") -> None:
    """Keep an axis inside the valid range of its quantity (accuracy [0, 1], loss >= 0)."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo = max(lo, low) if low is not None else lo
    hi = min(hi, high) if high is not None else hi
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo, hi)


def context_labels(runs: pd.DataFrame, contexts: list[tuple[str, str, str]]) -> dict[tuple, str]:
    """(data, model, group hash) -> `data/model`, plus `, n=500` etc. when several groups of one
    data/model differ: the config keys that set them apart (constant within each group). A group that
    trains on part of its training split says so (`, n=1000`) even when it is its data/model's only one."""
    labels = {ctx: f"{ctx[0]}/{ctx[1]}" for ctx in contexts}
    by_pair: dict[tuple, list[tuple]] = {}
    for ctx in contexts:
        by_pair.setdefault(ctx[:2], []).append(ctx)
    for pair, ctxs in by_pair.items():
        settings = {}
        for ctx in ctxs:
            configs = runs.loc[(runs["data"] == ctx[0]) & (runs["model"] == ctx[1]) & (runs["group_hash"] == ctx[2]),
                               "config"]
            flats = [comparable_config(c) for c in configs] or [{}]
            settings[ctx] = {k: v for k, v in flats[0].items() if all(f.get(k) == v for f in flats)}
        if len(ctxs) < 2:
            size = _plain(settings[ctxs[0]].get("data.train_size"))
            if size != "all":
                labels[ctxs[0]] += f", n={size}"
            continue
        keys = differing_keys(list(settings.values()))[:3]
        for ctx in ctxs:
            parts = [f"{SHORT.get(k, k.rsplit('.', 1)[-1])}={_plain(settings[ctx].get(k))}" for k in keys]
            labels[ctx] = ", ".join([labels[ctx], *parts]) if parts else f"{labels[ctx]} [{ctx[2]}]"
    return labels


def _plain(v: str | None) -> str:
    if v is None or v == "null":
        return "all"
    return v.strip('"')


_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?")


def arm_tick(label: str) -> str:
    """An arm's label as a tick: its settings on a second line, numbers to 3 significant digits (a tuned
    arm's label carries the chosen floats in full, which left its panel no width)."""
    short = _DECIMAL.sub(lambda m: f"{float(m.group()):.3g}", label)
    return short.replace(" (", "\n(", 1)


def _colors(per_arm: pd.DataFrame) -> dict[str, str]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = list(dict.fromkeys(per_arm["regularizer"]))
    return {a: cycle[i % len(cycle)] for i, a in enumerate(arms)}


def _contexts(per_arm: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(dict.fromkeys(map(tuple, per_arm[["data", "model", "config"]].to_numpy())))


def _height(per_arm: pd.DataFrame) -> float:
    most = per_arm.groupby(["data", "model", "config"]).size().max() if len(per_arm) else 1
    return 1.0 + 0.4 * most


def _grid(n: int, w: float = 5.0, h: float = 3.0):
    ncols = max(1, min(n, 3))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _curve_matrix(histories: list[dict], key: str) -> pd.DataFrame:
    """epochs x runs, NaN once a run has stopped (ragged histories)."""
    cols = []
    for h in histories:
        vals = np.asarray(h.get(key) or [], dtype=float)
        ep = h.get("epoch") or list(range(len(vals)))
        n = min(len(ep), len(vals))
        s = pd.Series(vals[:n], index=np.asarray(ep[:n], dtype=int))
        cols.append(s[~s.index.duplicated()])
    if not cols:
        return pd.DataFrame()
    return pd.concat(cols, axis=1, ignore_index=True).sort_index()


def _mean_band(m: pd.DataFrame):
    n = m.count(axis=1)
    mean = m.mean(axis=1)
    with np.errstate(all="ignore"):
        half = sps.t.ppf(0.975, n - 1) * m.std(axis=1, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def curves(runs: pd.DataFrame, per_arm: pd.DataFrame, path: Path, baseline: str = "none") -> Path:
    contexts = _contexts(per_arm)
    colors = _colors(per_arm)
    fig = Figure(figsize=(12, 3.4 * max(1, len(contexts))), layout="constrained")
    axes = fig.subplots(max(1, len(contexts)), 2, squeeze=False)
    _title(fig, "Learning curves of the ok runs: mean and 95% t-interval across seeds per epoch; "
                "after early stops the mean is over the runs still training.\n"
                "solid = validation, dashed = train; x = a run's early stop, o = its best epoch")
    names = context_labels(runs, contexts)
    if not contexts:
        axes[0, 0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[0, 0].transAxes)
    groups = list(ordered_arms(runs, baseline))
    for row, (data, model, cfg) in enumerate(contexts):
        ax_acc, ax_loss = axes[row]
        for key, g in groups:
            if (key[0], key[1], key[3]) != (data, model, cfg):
                continue
            ok = g[g["status"] == "ok"]
            hist = list(ok["history"])
            color = colors[key[2]]
            for ax, what in ((ax_acc, "acc"), (ax_loss, "loss")):
                for split, style in (("val", "-"), ("train", "--")):
                    m = _curve_matrix(hist, f"{split}/{what}")
                    if m.empty or m.count().sum() == 0:
                        continue
                    mean, lo, hi = _mean_band(m)
                    ax.plot(mean.index, mean.to_numpy(), style, color=color, lw=1.2,
                            label=key[2] if (split == "val" and what == "acc") else None)
                    valid = (0.0, 1.0) if what == "acc" else (0.0, np.inf)  # the t-interval knows no bounds
                    ax.fill_between(mean.index, np.clip(lo.to_numpy(), *valid), np.clip(hi.to_numpy(), *valid),
                                    color=color, alpha=0.15, lw=0)
            for _, r in ok[ok["stopped_early"]].iterrows():
                m = _curve_matrix([r["history"]], "val/acc")
                if m.empty:
                    continue
                s = m[0]
                for ep, marker, face in ((r["stopped_epoch"], "x", color), (r["best_epoch"], "o", "none")):
                    if not math.isnan(ep) and int(ep) in s.index:
                        ax_acc.plot([int(ep)], [s[int(ep)]], marker, color=color, mfc=face, ms=5)
        ax_acc.set_title(f"{names[(data, model, cfg)]}: accuracy", fontsize=9)
        ax_loss.set_title(f"{names[(data, model, cfg)]}: loss", fontsize=9)
        ax_acc.set_ylabel("accuracy")
        ax_loss.set_ylabel("cross-entropy loss")
        _bound(ax_acc, 0.0, 1.0)
        _bound(ax_loss, 0.0, None)
        for ax in (ax_acc, ax_loss):
            ax.set_xlabel("epoch (0-based)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax_acc.get_legend_handles_labels()
        handles += [Line2D([], [], color="gray", ls="-"), Line2D([], [], color="gray", ls="--")]
        ax_acc.legend(handles, labels + ["validation", "train"], fontsize=7)
    return _save(fig, path)


def _context_rows(per_arm: pd.DataFrame, ctx: tuple) -> pd.DataFrame:
    """The per-arm rows of one (data, model, config) context, in table order."""
    return per_arm[[tuple(x) == ctx for x in per_arm[["data", "model", "config"]].to_numpy()]]


def _arms_with_ok_runs(rows: pd.DataFrame, runs: pd.DataFrame, ctx: tuple):
    """(position, per-arm row, that arm's ok runs) for each row of a context."""
    for y, (_, r) in enumerate(rows.iterrows()):
        yield y, r, runs[(runs["data"] == ctx[0]) & (runs["model"] == ctx[1]) & (runs["group_hash"] == ctx[2])
                         & (runs["arm"] == r["regularizer"]) & (runs["status"] == "ok")]


def intervals(runs: pd.DataFrame, per_arm: pd.DataFrame, path: Path, metric: str = "test/acc",
              baseline: str = "none") -> Path:
    t = tag(metric)
    contexts = _contexts(per_arm)
    colors = _colors(per_arm)
    fig, axes = _grid(len(contexts), h=_height(per_arm))
    _title(fig, f"{metric}: mean and 95% t-interval per arm (dots = ok seeds)")
    names = context_labels(runs, contexts)
    if not contexts:
        axes[0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[0].transAxes)
    for ax, ctx in zip(axes, contexts):
        rows = _context_rows(per_arm, ctx)
        for y, r, g in _arms_with_ok_runs(rows, runs, ctx):
            vals = g[metric].dropna().to_numpy(float)
            ax.plot(vals, np.full(vals.size, y), ".", color="gray", alpha=0.6, ms=4)
            mean, lo, hi = r[f"{t}_mean"], r[f"{t}_ci95_low"], r[f"{t}_ci95_high"]
            if math.isnan(mean):
                continue
            if math.isnan(lo):
                ax.plot([mean], [y], "o", color=colors[r["regularizer"]])
                ax.annotate(" no CI", (mean, y), fontsize=7, va="center")
            else:
                ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o",
                            color=colors[r["regularizer"]], capsize=3)
        ax.set_yticks(range(len(rows)), [arm_tick(a) for a in rows["regularizer"]], fontsize=8)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        if metric.endswith("/acc"):
            _bound(ax, 0.0, 1.0, axis="x")
        elif metric.endswith("/loss"):
            _bound(ax, 0.0, None, axis="x")
        ax.set_title(textwrap.fill(names[ctx], 40), fontsize=9)  # long context labels: two lines, not clipped
    return _save(fig, path)


def gap(runs: pd.DataFrame, per_arm: pd.DataFrame, path: Path) -> Path:
    contexts = _contexts(per_arm)
    colors = _colors(per_arm)
    fig, axes = _grid(len(contexts), h=_height(per_arm))
    _title(fig, "Generalization gap train/acc - test/acc: bar = mean over ok runs, dots = seeds")
    names = context_labels(runs, contexts)
    if not contexts:
        axes[0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[0].transAxes)
    for ax, ctx in zip(axes, contexts):
        rows = _context_rows(per_arm, ctx)
        for y, r, g in _arms_with_ok_runs(rows, runs, ctx):
            vals = (g["train/acc"] - g["test/acc"]).dropna().to_numpy(float)
            if not math.isnan(r["train_minus_test_acc_mean"]):
                ax.barh([y], [r["train_minus_test_acc_mean"]], color=colors[r["regularizer"]], alpha=0.6)
            ax.plot(vals, np.full(vals.size, y), ".", color="black", ms=4)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(range(len(rows)), [arm_tick(a) for a in rows["regularizer"]], fontsize=8)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.invert_yaxis()
        ax.set_xlabel("train/acc - test/acc")
        _bound(ax, -1.0, 1.0, axis="x")
        ax.set_title(textwrap.fill(names[ctx], 40), fontsize=9)  # long context labels: two lines, not clipped
    return _save(fig, path)


def write_plots(runs: pd.DataFrame, per_arm: pd.DataFrame, out_dir: Path, metric: str = "test/acc",
                baseline: str = "none") -> list[Path]:
    with matplotlib.style.context("default"):
        return [*curves(runs, per_arm, out_dir / "curves.png", baseline),
                *intervals(runs, per_arm, out_dir / "intervals.png", metric, baseline),
                *gap(runs, per_arm, out_dir / "gap.png")]
