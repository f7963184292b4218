"""`refinenet-launch status JOB`: state, attempts, per process its host, pid, state and last line, and
the ranks flagged as stragglers.

Exit code 1 when the job FAILED, 0 otherwise, 2 for an unknown job.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional

from launcher.commands.list_jobs import format_table
from launcher.failures import Failure
from launcher.jobs import RUNS_DIR_ENV, JobDir, JobRecord, ProcessRecord, format_time
from launcher.logs.format import is_framework_log, parse_attempt_header, rank_log_name, tail_lines
from launcher.recovery import Recovery
from launcher.states import JobState


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Show the state of a job and of its ranks.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object")
    return parser


def _ago(t: Optional[float], now: float) -> str:
    if t is None:
        return "-"
    seconds = max(0, int(now - t))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _log_path(job: JobDir, proc: ProcessRecord) -> str:
    name = rank_log_name(proc.rank) if proc.rank is not None else f"{proc.name}.log"
    return str(job.logs_dir / name)


def last_output(path: str) -> Dict[str, Any]:
    """The last line of a process log the live stream would show (not an attempt header, not one of
    MindSpore's own INFO/DEBUG lines) and when the file last changed."""
    lines = [line for line in tail_lines(path, 50)
             if parse_attempt_header(line) is None and not is_framework_log(line)]
    try:
        mtime: Optional[float] = os.stat(path).st_mtime
    except FileNotFoundError:
        mtime = None
    return {"last_line": lines[-1] if lines else "", "last_output": mtime}


def collect(job: JobDir, record: JobRecord) -> Dict[str, Any]:
    """The status as plain data: the record plus, per process of the current attempt, its last line."""
    attempt = record.current_attempt
    processes: List[Dict[str, Any]] = []
    for proc in (attempt.processes if attempt else ()):
        processes.append({**proc.to_dict(), **last_output(_log_path(job, proc))})
    processes.sort(key=lambda p: (p["rank"] is None, p["rank"] if p["rank"] is not None else 0, p["name"]))
    launcher = record.launcher
    return {"job_id": record.job_id, "path": str(job.path), "state": record.state.value,
            "cluster": record.cluster, "cluster_file": record.cluster_file, "stage": record.stage,
            "created": record.created, "updated": record.updated, "message": record.message,
            "stop_requested": record.stop_requested,
            "launcher": {**launcher.to_dict(), "alive": launcher.is_alive_here(),
                         "this_machine": launcher.host == socket.gethostname()} if launcher else None,
            "attempts": [{k: v for k, v in a.to_dict().items() if k != "processes"} for a in record.attempts],
            "processes": processes,
            "metrics": {str(rank): rec for rank, rec in sorted(job.last_metrics().items())},
            "stragglers": [s.to_dict() for s in job.read_stragglers()],
            "hosts": {name: dict(state) for name, state in record.hosts.items()},
            "slurm": _slurm(record)}


def _slurm(record: JobRecord) -> Optional[Dict[str, Any]]:
    """The record's Slurm facts, with what Slurm says now while the job is not final."""
    if not record.slurm:
        return None
    from launcher.slurm import jobs as slurm_jobs

    info = dict(record.slurm)
    state = None if record.is_final else slurm_jobs.slurm_state(record)
    if state is not None:
        info["now"] = slurm_jobs.describe(state)
    return info


def _format_metrics(rec: Dict[str, Any]) -> str:
    labels = (("epoch", "epoch {}"), ("epoch_step", "step {}"), ("step", "global step {}"),
              ("loss", "loss {:.6g}"), ("lr", "lr {:.3g}"))
    parts = []
    for key, label in labels:
        try:
            parts.append(label.format(rec[key]))
        except (KeyError, ValueError, TypeError):
            continue
    when = f" ({format_time(rec['time'])})" if isinstance(rec.get("time"), (int, float)) else ""
    return ", ".join(parts) + when


def render(status: Dict[str, Any], now: Optional[float] = None) -> List[str]:
    now = time.time() if now is None else now
    out = [f"job       {status['job_id']}  ({status['path']})"]
    attempts = status["attempts"]
    state = status["state"]
    if status["stop_requested"] and state not in ("STOPPED", "SUCCEEDED", "FAILED"):
        state += " (stop requested)"
    out.append(f"state     {state}, {len(attempts)} attempt(s), started {format_time(status['created'])}, "
               f"updated {_ago(status['updated'], now)}")
    if status["message"]:
        out.append(f"message   {status['message']}")
    source = f" ({status['cluster_file']})" if status["cluster_file"] else ""
    stage = status["stage"]
    if "," in stage and attempts:
        stage += f" (now {attempts[-1].get('stage') or '?'})"
    out.append(f"cluster   {status['cluster']}{source}, stage {stage}")
    slurm = status.get("slurm")
    if slurm:
        where = f", nodes {','.join(slurm['nodes'])}" if slurm.get("nodes") else ""
        limit = f", time limit {slurm['time_limit']}" if slurm.get("time_limit") else ""
        now_ = f": {slurm['now']}" if slurm.get("now") else ""
        how = "submitted" if slurm.get("submitted") else "allocation"
        out.append(f"slurm     job {slurm.get('job_id', '?')} ({how}{where}{limit}){now_}")
    launcher = status["launcher"]
    if launcher:
        alive = ("running" if launcher["alive"] else "not running") if launcher["this_machine"] else (
            "another machine")
        out.append(f"launcher  pid {launcher['pid']} on {launcher['host']} ({alive})")
        if launcher["this_machine"] and not launcher["alive"] and status["state"] not in (
                "STOPPED", "SUCCEEDED", "FAILED"):
            out.append(f"          nothing watches this job: `refinenet-launch stop {status['job_id']}` "
                       f"ends what is left of it")
    for i, (name, h) in enumerate(sorted((status.get("hosts") or {}).items())):
        label = "hosts     " if i == 0 else "          "
        detail = ""
        if h.get("state") == "excluded":
            detail = f": {h.get('reason')}" + (f" (ranks moved to {h['replaced_by']})" if h.get("replaced_by")
                                               else "")
        out.append(f"{label}{name} {h.get('state')}{detail}")
    for a in attempts:
        span = f"{format_time(a['started'])} -> {format_time(a['ended'])}".rstrip(" ->")
        extra = []
        if a["resume"]:
            extra.append(f"resumed from {a['resume']}")
        if a["failure"]:
            extra.append(Failure.from_dict(a["failure"]).summary())
        label = "attempts  " if a is attempts[0] else "          "
        what = f" {a['stage']}" if "," in status["stage"] and a.get("stage") else ""
        notes = "  " + "; ".join(extra) if extra else ""
        out.append(f"{label}{a['number']}{what} {a['state']} {span}{notes}")
        if a.get("recovery"):
            out.append(f"            recovery: {Recovery.from_dict(a['recovery']).describe()}")
    if status["processes"]:
        rows = [("PROCESS", "HOST", "PID", "PGID", "STATE", "EXIT", "OUTPUT", "LAST LINE")]
        for p in status["processes"]:
            rows.append((p["name"], p["host"], str(p["pid"]), str(p["pgid"]), p["state"],
                         "" if p["exit_code"] is None else str(p["exit_code"]), _ago(p["last_output"], now),
                         p["last_line"][:120]))
        out += format_table(rows)
    for rank, rec in status["metrics"].items():
        out.append(f"progress  rank {rank}: {_format_metrics(rec)}")
    for i, s in enumerate(status.get("stragglers") or ()):
        label = "stragglers" if i == 0 else "          "
        out.append(f"{label} attempt {s['attempt']} rank {s['rank']} on {s['host']}: step time "
                   f"{s['step_time']:.2f} s = {s['ratio']:.1f}x the median of the others "
                   f"since {format_time(s['since'])}")
    return out


def run(args: argparse.Namespace) -> int:
    from launcher.slurm.jobs import reconcile

    job = JobDir.resolve(args.job, args.runs_dir)
    record = reconcile(job)
    status = collect(job, record)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print("\n".join(render(status)))
    return 1 if record.state == JobState.FAILED else 0
