"""`refinenet-launch logs JOB [--follow] [--ranks 0,3] [--attempt N]`: re-tail a job's aggregated log.

Reads `JOB/logs/job.log` (every process's lines prefixed `[r<rank> <host>]`, attempts marked), so
it works for running and finished jobs alike; `--follow` keeps printing new lines until the job
reaches a final state.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Optional

from launcher.errors import BadInput
from launcher.jobs import RUNS_DIR_ENV, JobDir
from launcher.logs.format import JOB_LOG, JobLogFilter, parse_ranks


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Print the aggregated log of a job.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new lines until the job succeeds, fails or is stopped")
    parser.add_argument("--ranks", help="only these ranks, e.g. 0,3 or 0-3")
    parser.add_argument("--attempt", type=int, help="only this attempt (1 is the first launch)")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--interval", type=float, default=0.25, help=argparse.SUPPRESS)
    return parser


#: How often `--follow` asks Slurm whether a job it runs has ended without its launcher saying so.
SLURM_POLL_S = 5.0


def _check_filters(job: JobDir, ranks: Optional[set], attempt: Optional[int]) -> None:
    record = job.read()
    if attempt is not None:
        if attempt < 1:
            raise BadInput(f"--attempt: {attempt} is not an attempt number (attempts count from 1)")
        if attempt > len(record.attempts) + (0 if record.is_final else 1):
            raise BadInput(f"--attempt: job {record.job_id} has {len(record.attempts)} attempt(s)")
    if ranks:
        known = {p.rank for a in record.attempts for p in a.ranks}
        unknown = sorted(ranks - known) if known else []
        if unknown:
            raise BadInput(f"--ranks: job {record.job_id} has no rank {', '.join(map(str, unknown))} "
                           f"(its ranks: {min(known)}-{max(known)})")


def print_log(job: JobDir, out: IO[str], keep: JobLogFilter, follow: bool, interval: float) -> None:
    """Copy the selected whole lines of job.log to `out`; with `follow`, until the job is final."""
    path = job.logs_dir / JOB_LOG
    handle = None
    partial = b""
    final_seen = False
    asked_slurm = time.monotonic()
    while True:
        if handle is None:
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                handle = None
        chunk = handle.read(1 << 16) if handle is not None else b""
        if chunk:
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            text = [line.decode("utf-8", errors="replace") for line in lines]
            selected = [line for line in text if keep.keep(line)]
            if selected:
                out.write("\n".join(selected) + "\n")
                out.flush()
            continue
        if not follow or final_seen:
            break
        final_seen = job.read().is_final
        if not final_seen and time.monotonic() - asked_slurm > SLURM_POLL_S:
            from launcher.slurm.jobs import reconcile

            asked_slurm = time.monotonic()
            final_seen = reconcile(job).is_final
        if not final_seen:
            time.sleep(interval)
    if handle is not None:
        handle.close()


def run(args: argparse.Namespace) -> int:
    job = JobDir.resolve(args.job, args.runs_dir)
    ranks = parse_ranks(args.ranks) if args.ranks else None
    _check_filters(job, ranks, args.attempt)
    if not (job.logs_dir / JOB_LOG).exists() and not args.follow:
        print(f"job {job.job_id} has no log yet ({job.logs_dir / JOB_LOG})", file=sys.stderr)
        return 0
    try:
        print_log(job, sys.stdout, JobLogFilter(ranks, args.attempt), args.follow, args.interval)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
