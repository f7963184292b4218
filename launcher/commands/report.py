"""`refinenet-launch report JOB [-o DIR]`: one self-contained HTML page about a job.

Reads only the job directory (and local hosts' output directories when they exist here), so it
works on a running job, a finished one, and a job directory copied to another machine.
"""
from __future__ import annotations

import argparse

from launcher.jobs import RUNS_DIR_ENV, JobDir


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Write an HTML report of a job: loss, step "
                                     "time, throughput, attempts, health, evaluation, predictions.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("-o", "--output-dir",
                        help="folder for report.html and its figures (default: JOB/report)")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    return parser


def run(args: argparse.Namespace) -> int:
    from launcher.report import write_report

    job = JobDir.resolve(args.job, args.runs_dir)
    path = write_report(job.path, args.output_dir)
    print(path)
    return 0
