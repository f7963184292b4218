"""`refinenet-launch stacks JOB`: every running rank's Python stack, now, from any terminal.

Each host of the job is asked at once (a short host-program command, `launcher/hostside/stacks.py`:
py-spy, or /proc where it cannot); the capture is saved in the job folder (`JOB/stacks/`), the ranks
are grouped by identical stack and the one(s) that differ from the others are named, as when the
hang check fires. Exit 0 with the summary, 1 when no rank of the job runs, 2 for an unknown job.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Tuple

from launcher import stacks
from launcher.errors import HostError
from launcher.fanout import fan_out
from launcher.jobs import RUNS_DIR_ENV, JobDir


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Take every running rank's Python stack now "
                                                            "and name the rank(s) whose stack differs.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per host (default 10)")
    parser.add_argument("--json", action="store_true", help="print the analysis as one JSON object")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    return parser


def run(args: argparse.Namespace) -> int:
    from launcher.spec.load import parse_cluster
    from launcher.transport.factory import open_transport

    job = JobDir.resolve(args.job, args.runs_dir)
    record = job.read()
    attempt = record.current_attempt
    running = [p for p in (attempt.processes if attempt else ())
               if p.rank is not None and not p.state.is_final]
    if record.is_final or not running:
        print(f"job {record.job_id} is {record.state.value}: no rank runs", file=sys.stderr)
        return 1
    hosts = {h.name: h for h in parse_cluster(dict(record.spec), f"{job.job_file} (spec)").hosts}
    by_host: Dict[str, List[Tuple[int, int]]] = {}
    for p in running:
        by_host.setdefault(p.host, []).append((p.rank, p.pid))

    def take(name: str):
        with open_transport(hosts[name]) as transport:
            code, out, err = transport.run_mode("stacks", ["--timeout", str(args.timeout),
                                                           *(str(pid) for _, pid in by_host[name])],
                                                timeout=args.timeout + 30)
        if code != 0:
            raise HostError(name, f"stacks: exit {code}: {err.strip()[-300:]}")
        return dict(zip((rank for rank, _ in by_host[name]), json.loads(out.strip().splitlines()[-1])))

    taken = fan_out(take, [h for h in by_host if h in hosts], key=str, catch=(HostError, ValueError))
    records = {(rank, host): rec for host, found in taken.succeeded.items() for rank, rec in found.items()}
    for host, exc in taken.failed.items():
        for rank, pid in by_host[host]:
            records[(rank, host)] = {"pid": pid, "status": "failed", "reason": str(exc), "threads": []}
    report = stacks.analyse(records)
    folder = stacks.save(report, records, job.path, attempt.number, time.time())
    if args.json:
        print(json.dumps(dict(report.to_dict(), folder=str(folder))))
    else:
        print(report.summary())
        print(f"saved in {folder}")
    return 0
