"""Regenerate comparison reports from results.json records.

    python -m regbench.tables [PATH ...] [--out DIR] [--baseline none] [--metric test/acc] [--no-plots]
    python -m regbench.tables --each [--if-changed] ROOT [ROOT ...]

The first form pools every results.json below the PATHs (default: runs/) into one report written to
--out (default: the single PATH given, else runs/) and prints the per-arm table. The second writes a
report into every sweep folder below each ROOT (a folder with a multirun.yaml, or whose immediate
subfolders hold results.json); with --if-changed only those whose records (or the reporting code)
changed since their report was written (regbench.reporting.stamp), saying which it rebuilt and which
it left; `make tables` runs `python -m regbench.tables --each --if-changed runs experiments`.
Exit status: 0 on success, 1 when there were no runs, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from regbench.records import METRIC_KEYS
from regbench.reporting import stamp
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
    p.add_argument("--if-changed", action="store_true",
                   help="with --each: rebuild only the reports whose records changed since they were written")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s: %(message)s")
    paths = [Path(p) for p in (args.paths or ["runs"])]
    for p in paths:
        if not p.exists():
            print(f"warning: {p} does not exist", file=sys.stderr)
    opts = dict(baseline=args.baseline, metric=args.metric, plots=not args.no_plots)

    if args.each:
        if args.out:
            print("error: --out cannot be combined with --each (each sweep gets its own report)", file=sys.stderr)
            return 2
        sweeps = find_sweep_dirs(paths)
        if not sweeps:
            print(f"no runs: no sweep folder found below {', '.join(map(str, paths))}", file=sys.stderr)
            return 1
        written = unchanged = 0
        for d in sweeps:
            fp = stamp.fingerprint(d, **opts)
            if args.if_changed and stamp.is_current(d, "report", fp):
                unchanged += 1
                print(f"{d}: unchanged (its records are those of its report)")
                continue
            try:
                r = write_report([d], d, **opts)
            except NoRunsError as e:
                print(f"warning: {d}: {e}", file=sys.stderr)
                continue
            stamp.mark(d, "report", fp)
            written += 1
            skipped = f", {len(r.skipped)} unreadable skipped" if r.skipped else ""
            print(f"{d}: rebuilt: report of {r.n_runs} runs{skipped}")
        print(f"{written} report(s) rebuilt, {unchanged} unchanged", file=sys.stderr)
        return 0 if written or unchanged else 1

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
