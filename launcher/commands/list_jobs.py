"""`refinenet-launch list`: the jobs in the runs directory with state, stage, start time, attempts."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Sequence

from launcher.jobs import RUNS_DIR_ENV, JobDir, JobRecord, format_time, list_job_dirs, resolve_runs_dir
from launcher.slurm.jobs import reconcile


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="List the jobs in the runs directory.")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per job")
    return parser


def _stage(record) -> str:
    """The job's stage; for a multi-stage job the stage in progress (or last run) is marked."""
    if "," not in record.stage:
        return record.stage
    current = record.attempts[-1].stage if record.attempts else ""
    return ",".join(f"[{s}]" if s == current else s for s in record.stage.split(","))


def format_table(rows: Sequence[Sequence[str]]) -> List[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
            if len(row) > 1 else row[0] for row in rows]


def _summary(job: JobDir, record: JobRecord) -> dict:
    attempt = record.current_attempt
    return {"job_id": record.job_id, "state": record.state.value, "cluster": record.cluster,
            "stage": _stage(record), "created": record.created, "attempts": len(record.attempts),
            "ranks": max((len(a.ranks) for a in record.attempts), default=0), "path": str(job.path),
            "failure": attempt.failure.summary() if attempt and attempt.failure else ""}


def run(args: argparse.Namespace) -> int:
    runs = resolve_runs_dir(args.runs_dir)
    entries, unreadable = [], []
    for job in list_job_dirs(runs):
        try:
            entries.append(_summary(job, reconcile(job)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            unreadable.append((job, exc))
    entries.sort(key=lambda e: (e["created"], e["job_id"]))
    if args.json:
        for entry in entries:
            print(json.dumps(entry))
    elif not entries:
        print(f"no jobs in {runs}")
    else:
        rows = [("JOB", "STATE", "STAGE", "STARTED", "ATTEMPTS", "RANKS", "CLUSTER")]
        rows += [(e["job_id"], e["state"], e["stage"], format_time(e["created"]), str(e["attempts"]),
                  str(e["ranks"]), e["cluster"]) for e in entries]
        print("\n".join(format_table(rows)))
    for job, exc in unreadable:
        print(f"refinenet-launch list: {job.path / 'job.json'} is unreadable: {exc}", file=sys.stderr)
    return 0
