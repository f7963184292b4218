"""Jobs Slurm runs: what Slurm says of them, and their end recorded when the launcher could not record it.

A job `submit` queued is PENDING in job.json until its launcher starts inside the allocation. If Slurm
ends the job first (cancelled while queued, the time limit, the batch script killed), `reconcile` writes
that end into job.json, so `status`, `list` and `logs --follow` never show a job that no longer runs as live.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from typing import Dict, Optional

from launcher.jobs import JobDir, JobRecord
from launcher.slurm import job_finished, parse_exit_code, parse_job_state, time_limit_hit
from launcher.states import JobState

TIMEOUT_S = 15.0


def _client(*argv: str) -> Optional[subprocess.CompletedProcess]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_state(record: JobRecord) -> Optional[Dict[str, str]]:
    """`scontrol show job` of the record's Slurm job; None when it has none or Slurm no longer knows it."""
    slurm_id = record.slurm.get("job_id")
    if not slurm_id:
        return None
    result = _client("scontrol", "show", "job", "-o", str(slurm_id))
    if result is None or result.returncode != 0:
        return None
    try:
        return parse_job_state(result.stdout)
    except ValueError:
        return None


def describe(state: Dict[str, str]) -> str:
    """`PENDING (Resources)`, `RUNNING on n[1-2]`, `TIMEOUT (time limit 00:01:00)`, ..."""
    what = state.get("JobState", "?")
    if what == "PENDING":
        return f"PENDING ({state.get('Reason') or 'queued'})"
    if time_limit_hit(state):
        return f"{what} (time limit {state.get('TimeLimit')})"
    if what in ("RUNNING", "COMPLETING"):
        return f"{what} on {state.get('NodeList')}"
    code, sig = parse_exit_code(state.get("ExitCode") or "0:0")
    return f"{what} (exit code {code}" + (f", signal {sig})" if sig else ")")


def ended_message(slurm_id: str, state: Dict[str, str]) -> str:
    if time_limit_hit(state):
        return f"the Slurm allocation's time limit ({state.get('TimeLimit')}) ended Slurm job {slurm_id}"
    return f"Slurm job {slurm_id} ended {describe(state)} before the launcher recorded an end"


def reconcile(job: JobDir, record: Optional[JobRecord] = None) -> JobRecord:
    """The job's record, with Slurm's end written into it when Slurm ended the job and the launcher did
    not record it (a cancelled job STOPPED, any other end FAILED)."""
    record = record or job.read()
    if record.is_final or not record.slurm.get("job_id"):
        return record
    state = slurm_state(record)
    if state is None or not job_finished(state):
        return record
    time.sleep(0.2)  # a launcher that just ended may be writing its own final state
    new = JobState.STOPPED if state.get("JobState") == "CANCELLED" and not time_limit_hit(state) \
        else JobState.FAILED
    message = ended_message(str(record.slurm["job_id"]), state)
    return job.update(lambda r: r if r.is_final else r.with_state(new, message))


def cancel(record: JobRecord, *options: str) -> Optional[subprocess.CompletedProcess]:
    """`scancel [options] JOBID` for the record's Slurm job."""
    return _client("scancel", *options, str(record.slurm["job_id"]))
