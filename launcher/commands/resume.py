"""`refinenet-launch resume JOB`: continue a STOPPED or FAILED job where it ended.

The same cluster file, stage(s), options and job folder as the launch that made it (its request, kept in
job.json); a new attempt from the newest checkpoint every host holds complete; for a multi-stage job,
from the stage it stopped in. A job stopped with `stop --save` (or saved before a Slurm time limit)
loses no step. A `backend: slurm` job resumes inside an allocation: `salloc -N N refinenet-launch resume
JOB`.
"""
from __future__ import annotations

import argparse
from typing import Optional

from launcher.errors import BadInput
from launcher.jobs import RUNS_DIR_ENV, JobDir
from launcher.planning.prepare import prepare
from launcher.planning.request import LaunchRequest
from launcher.states import JobState


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Continue a STOPPED or FAILED job from its newest complete checkpoint, with "
                               "the cluster file, stages and options it was launched with.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--max-restarts", type=int, metavar="N",
                        help="restarts after a failure (default: as the job was launched)")
    parser.add_argument("--wait", nargs="?", const="", metavar="SECONDS",
                        help="queue for held devices or slots instead of exiting 2 (refinenet-launch --help)")
    return parser


def resumed_request(job: JobDir, max_restarts: Optional[int] = None, wait: Optional[str] = None
                    ) -> LaunchRequest:
    """The request that continues `job`; `BadInput` when it cannot be resumed."""
    record = job.read()
    if record.state not in (JobState.FAILED, JobState.STOPPED):
        raise BadInput(f"job {record.job_id} is {record.state.value}: only a STOPPED or FAILED job can be "
                       f"resumed")
    if not record.request:
        raise BadInput(f"job {record.job_id} kept no record of how it was launched (job.json has no "
                       f"request): launch it again instead")
    request = LaunchRequest.from_dict(record.request)
    changes = {"job_dir": str(job.path.absolute()), "job_id": record.job_id, "dry_run": False,
               "queued": False}
    if max_restarts is not None:
        if max_restarts < 0:
            raise BadInput(f"--max-restarts: {max_restarts} is negative")
        changes["max_restarts"] = max_restarts
    if wait is not None:
        changes["wait"] = wait
    return request.with_changes(**changes)


def run(args: argparse.Namespace) -> int:
    from launcher.runner import run_job

    job = JobDir.resolve(args.job, args.runs_dir)
    request = resumed_request(job, args.max_restarts, args.wait)
    record = job.read()
    prepared = prepare(request)
    return run_job(prepared, resuming=record)
