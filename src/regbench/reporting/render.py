"""Write a table as Markdown (hand-written, no tabulate), CSV and LaTeX, with fixed number formats."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

NA_MD, NA_TEX = "–", "--"


def _fmt(col: str, v) -> str | None:
    """Fixed formatting by column name; None for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str):
        return v
    if col.startswith(("seeds_", "n_")) or col in ("contexts_ranked", "settings_ranked", "rank"):
        return str(int(v))
    if col.startswith("p_"):
        return f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"
    if col in ("prob_improvement", "mean_rank") or col.startswith("rank "):
        return f"{v:.2f}"
    if "epoch" in col or "seconds" in col:
        return f"{v:.1f}"
    return f"{v:.4f}"


def formatted(df: pd.DataFrame, na: str) -> pd.DataFrame:
    out = pd.DataFrame({c: [_fmt(c, v) for v in df[c].tolist()] for c in df.columns}, dtype=object)
    return out.fillna(na) if len(out) else out


def _is_numeric(df: pd.DataFrame, col: str) -> bool:
    return col != "config" and pd.api.types.is_numeric_dtype(df[col])


def markdown(df: pd.DataFrame) -> str:
    s = formatted(df, NA_MD)
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join("---:" if _is_numeric(df, c) else ":---" for c in df.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in s.itertuples(index=False)]
    return "\n".join(lines)


def latex(df: pd.DataFrame, caption: str) -> str:
    s = formatted(df, NA_TEX)
    styler = s.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    align = "".join("r" if _is_numeric(df, c) else "l" for c in df.columns)
    tex = styler.to_latex(hrules=True, column_format=align, caption=caption.replace("_", r"\_"))
    return tex if tex.endswith("\n") else tex + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, title: str, legend: str,
                notes: list[str], md_view: pd.DataFrame | None = None) -> tuple[list[Path], str]:
    """Write stem.md / .csv / .tex; returns (paths, the Markdown text). `md_view` (already formatted
    strings) replaces `df` in the Markdown: the at-a-glance columns; the CSV and LaTeX keep all of df."""
    md = [f"## {title}", "", markdown(df if md_view is None else md_view), "", f"*Legend:* {legend}"]
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text(text)
    paths[1].write_text(df.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    paths[2].write_text(latex(df, title))
    return paths, text
