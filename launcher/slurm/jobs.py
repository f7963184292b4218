"""Jobs Slurm runs: what Slurm says of them, and their end recorded when the launcher could not record it.

A job `submit` queued is PENDING in job.json until its launcher starts inside the allocation. If Slurm
ends the job first (cancelled while queued, the time limit, the batch script killed), `reconcile` writes
that end into job.json, so `status`, `list` and `logs --follow` never show a job that no longer runs as live.
"""
from __future__ import annotations

import subprocess
import time
from typing import Dict, Optional

from launcher.errors import BadInput
from launcher.jobs import JobDir, JobRecord
from launcher.slurm.allocation import show_job, slurm_run
from launcher.slurm.text import job_finished, parse_exit_code, time_limit_hit
from launcher.states import JobState

TIMEOUT_S = 15.0


def _client(argv) -> subprocess.CompletedProcess:
    """A Slurm client command; what Slurm cannot answer here (not installed, too slow) is an OSError."""
    try:
        return slurm_run(argv, TIMEOUT_S)
    except (BadInput, subprocess.SubprocessError) as exc:
        raise OSError(str(exc)) from None


def slurm_state(record: JobRecord) -> Optional[Dict[str, str]]:
    """`scontrol show job` of the record's Slurm job; None when it has none, Slurm no longer knows it, or
    Slurm cannot be asked from here."""
    slurm_id = record.slurm.get("job_id")
    if not slurm_id:
        return None
    try:
        return show_job(str(slurm_id), _client)
    except OSError:
        return None


def ended(record: JobRecord) -> bool:
    """Whether Slurm has ended the record's job (or no longer knows it)."""
    state = slurm_state(record)
    return state is None or job_finished(state)


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


def cancel(record: JobRecord, *options: str) -> None:
    """`scancel [options] JOBID` for the record's Slurm job (nothing if Slurm cannot be asked from here)."""
    try:
        _client(["scancel", *options, str(record.slurm["job_id"])])
    except OSError:
        pass
