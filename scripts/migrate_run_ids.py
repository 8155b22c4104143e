"""One-off migration (2026-12-02): run ids no longer hash `logger`, `trainer.progress_bar`, nor an
unset `trainer.gradient_clip_val` (they change no number; runs made before those keys existed keep
their ids, so a rerun of `make study` finds its committed records again).

Records written while the keys were hashed are renamed to the id their config has now: each run
folder moves to `run_id(config)`, and its record's `run_id` and `group_hash` follow; a tuned arm's
folder moves to `study_name` of its job config (composed from its preset), with the Optuna study in
its study.db and each record's `config.protocol.study` renamed alike.

    python scripts/migrate_run_ids.py EXPERIMENT_DIR [PRESET]   (PRESET: the tuned sweep's experiment=)
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from regbench.naming import group_hash, run_id, study_name
from regbench.records import RESULTS_FILE, write_record


def rename_runs(root: Path, study_renames: dict[str, str]) -> int:
    moved = 0
    for f in sorted(root.rglob(RESULTS_FILE)):
        record = json.loads(f.read_text())
        protocol = record["config"].get("protocol") or {}
        if protocol.get("study") in study_renames:
            protocol["study"] = study_renames[protocol["study"]]
        new = run_id(record["config"])
        record["run_id"], record["group_hash"] = new, group_hash(record["config"])
        write_record(f.parent, record)
        if f.parent.name != new:
            f.parent.rename(f.parent.with_name(new))
            moved += 1
    return moved


def rename_studies(root: Path, preset: str) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import compose

    renames = {}
    for study_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("tuned-")):
        final = next(study_dir.glob(f"final/*/{RESULTS_FILE}"))
        cfg = json.loads(final.read_text())["config"]
        size = cfg["data"]["train_size"]
        job = compose([f"experiment={preset}", f"+size_axis=n{size}", f"regularizer={cfg['regularizer']['name']}"])
        new = study_name(job)
        if new != study_dir.name:
            with sqlite3.connect(study_dir / "study.db") as db:
                db.execute("UPDATE studies SET study_name = ? WHERE study_name = ?", (new, study_dir.name))
            renames[study_dir.name] = new
            study_dir.rename(study_dir.with_name(new))
    return renames


if __name__ == "__main__":
    root = Path(sys.argv[1])
    renames = rename_studies(root, sys.argv[2]) if len(sys.argv) > 2 else {}
    print(f"{root}: {len(renames)} studies renamed, {rename_runs(root, renames)} run folders renamed")
