"""Regenerate comparison reports from results.json records.

    python -m regbench.tables [PATH ...] [--out DIR] [--baseline none] [--metric test/acc] [--no-plots]
                              [--equivalence-margin 0.01]
    python -m regbench.tables --each ROOT [ROOT ...]
    python -m regbench.tables PATH --seeds-for 1pp

The first form pools every results.json below the PATHs (default: runs/) into one report written to
--out (default: the single PATH given, else runs/) and prints the per-arm table. The second writes a
report into every sweep folder below each ROOT (a folder with a multirun.yaml, or whose immediate
subfolders hold results.json); `make tables` runs `python -m regbench.tables --each runs experiments`.
The third prints, for every paired comparison of the pairwise table, how many seeds a paired t-test
at Holm's first-step level (alpha / family size) needs to detect the target difference with 80 %
power, given the spread of the per-seed differences seen so far (statsmodels TTestPower); it writes
nothing. A target is `1pp` (percentage points of accuracy) or a number in the metric's units.
Exit status: 0 on success, 1 when there were no runs, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from regbench.records import METRIC_KEYS
from regbench.reporting import stats
from regbench.reporting.report import NoRunsError, find_sweep_dirs, write_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m regbench.tables", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="run folders, sweep folders or results.json files (default: runs)")
    p.add_argument("--out", help="output folder (default: the single PATH given, else runs)")
    p.add_argument("--baseline", default="none", help="regularizer the pairwise table compares against")
    p.add_argument("--metric", default="test/acc", choices=METRIC_KEYS, help="metric the tables compare")
    p.add_argument("--each", action="store_true",
                   help="treat PATHs as roots and write a report into every sweep folder below them")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--equivalence-margin", type=float, default=None,
                   help=f"smallest difference of interest for the equivalence test (TOST), in the metric's "
                        f"units (default {stats.EQUIVALENCE_MARGIN:g} = 1 pp accuracy)")
    p.add_argument("--seeds-for", metavar="EFFECT",
                   help="print the seeds each comparison needs to detect EFFECT (e.g. 1pp, 0.005) and exit")
    return p


def parse_effect(text: str) -> float:
    """`1pp` -> 0.01, `0.5pp` -> 0.005, `0.01` -> 0.01; ValueError naming the value otherwise."""
    t = text.strip().lower()
    try:
        v = float(t[:-2]) / 100 if t.endswith("pp") else float(t)
    except ValueError:
        raise ValueError(f"--seeds-for={text!r} is not an effect size: allowed a number (metric units) "
                         f"or a number followed by pp (percentage points)") from None
    if not v > 0:
        raise ValueError(f"--seeds-for={text!r} must be positive")
    return v


def seeds_for(paths: list[Path], effect: float, metric: str, baseline: str) -> str:
    """The --seeds-for table (Markdown) from the records below `paths`."""
    from regbench.reporting.collect import load_runs
    from regbench.reporting.tables import pairwise_table

    loaded = load_runs(paths)
    if loaded.runs.empty:
        raise NoRunsError(f"no runs: no readable records in {', '.join(map(str, paths))}")
    pw, _ = pairwise_table(loaded.runs, metric, baseline)
    lines = [f"Seeds needed to detect a difference of {effect:g} in {metric} with {stats.POWER:.0%} power "
             f"(paired t-test at alpha {stats.ALPHA} / family size):", "",
             "| comparison | setting | seeds used | SD of per-seed differences | seeds needed |",
             "|:---|:---|---:|---:|---:|"]
    for _, r in pw.iterrows():
        m = int((pw["family"] == r["family"]).sum())
        sd = r["sd_diff"]
        need = stats.seeds_needed(effect, sd, stats.ALPHA / m) if r["pairing"].startswith("paired") else float("nan")
        lines.append(f"| {r['regularizer']} − {r['baseline']} | {r['data']}/{r['model']} [{r['config']}] | "
                     f"{int(r['n_arm'])} | {'–' if sd != sd else f'{sd:.4f}'} | "
                     f"{'– (unpaired or no spread estimate)' if need != need else int(need)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s: %(message)s")
    paths = [Path(p) for p in (args.paths or ["runs"])]
    for p in paths:
        if not p.exists():
            print(f"warning: {p} does not exist", file=sys.stderr)
    if args.seeds_for is not None:
        try:
            effect = parse_effect(args.seeds_for)
            print(seeds_for(paths, effect, args.metric, args.baseline), end="")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1 if isinstance(e, NoRunsError) else 2
        return 0
    opts = dict(baseline=args.baseline, metric=args.metric, plots=not args.no_plots,
                equivalence_margin=args.equivalence_margin)

    if args.each:
        if args.out:
            print("error: --out cannot be combined with --each (each sweep gets its own report)", file=sys.stderr)
            return 2
        sweeps = find_sweep_dirs(paths)
        if not sweeps:
            print(f"no runs: no sweep folder found below {', '.join(map(str, paths))}", file=sys.stderr)
            return 1
        written = 0
        for d in sweeps:
            try:
                r = write_report([d], d, **opts)
            except NoRunsError as e:
                print(f"warning: {d}: {e}", file=sys.stderr)
                continue
            written += 1
            skipped = f", {len(r.skipped)} unreadable skipped" if r.skipped else ""
            print(f"{d}: report of {r.n_runs} runs{skipped}")
        return 0 if written else 1

    try:
        r = write_report(paths, args.out, **opts)
    except NoRunsError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(r.markdown, end="")
    print(f"report written to {r.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
