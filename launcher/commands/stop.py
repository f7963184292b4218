"""`refinenet-launch stop JOB`: stop every process of a job on every host, and nothing else.

If the job's launcher still runs on this machine it gets SIGTERM (it tears its ranks down and
records STOPPED itself); `stop` waits up to `--timeout` seconds for that. Otherwise, or if that
does not happen in time, `stop` rebuilds the transports from the cluster spec kept in job.json
and signals each recorded process group on its host through `Transport.kill_group(...,
verify_env=("REFINENET_JOB_ID", job id))`: only groups that still hold a process tagged with this
job are signalled, so a reused process group id is never touched. SIGTERM first, SIGKILL after
`--grace` seconds. The job is then marked STOPPED.

Exit code 0 when the job is stopped (or had already ended), 1 when some process could not be
stopped (e.g. its host is unreachable), 2 for an unknown job.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from typing import Dict, Iterable, List, Set

from launcher.errors import HostError
from launcher.jobs import JOB_ID_ENV, RUNS_DIR_ENV, JobDir, JobRecord, ProcessRecord
from launcher.states import JobState


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Stop a job: every rank on every host.")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a live launcher to stop the job itself (default 30)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL of a process group (default 10)")
    parser.add_argument("--save", action="store_true",
                        help="let every rank finish its current step and save a checkpoint first (the job "
                             "ends STOPPED; `refinenet-launch resume JOB` continues it losing no step); "
                             "waits up to the cluster file's timeouts.save_s for that")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    return parser


def stop_groups(transport, job_id: str, pgids: Iterable[int], grace: float) -> Set[int]:
    """SIGTERM the job's groups among `pgids`, SIGKILL what is left after `grace` s; returns the survivors.

    Every signal is verified on the host: only a group that still holds a live process with
    `REFINENET_JOB_ID=<job_id>` in its environment is signalled.
    """
    tag = (JOB_ID_ENV, job_id)
    alive = set(pgids)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = {pgid for pgid in sorted(alive) if transport.kill_group(pgid, sig, verify_env=tag)}
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {pgid for pgid in alive if transport.kill_group(pgid, 0, verify_env=tag)}
        if not alive:
            break
    return alive


def _hosts_of(record: JobRecord, job: JobDir) -> Dict[str, object]:
    from launcher.spec.load import parse_cluster

    cluster = parse_cluster(dict(record.spec), f"{job.job_file} (spec)")
    return {host.name: host for host in cluster.hosts}


def stop_processes(job: JobDir, grace: float) -> List[str]:
    """Stop the recorded unfinished processes of the job on their hosts; the problems, if any."""
    from launcher.transport.factory import open_transport

    record = job.read()
    by_host: Dict[str, List[ProcessRecord]] = defaultdict(list)
    for proc in record.active_processes():
        by_host[proc.host].append(proc)
    problems: List[str] = []
    stopped: Set[tuple] = set()
    hosts = _hosts_of(record, job) if by_host else {}
    for host_name, procs in sorted(by_host.items()):
        host = hosts.get(host_name)
        names = ", ".join(p.name for p in procs)
        if host is None:
            problems.append(f"{host_name}: not a host of the job's cluster spec; could not stop {names}")
            continue
        try:
            with open_transport(host) as transport:
                survivors = stop_groups(transport, record.job_id, (p.pgid for p in procs), grace)
        except HostError as exc:
            problems.append(f"{exc}; could not stop {names}")
            continue
        for proc in procs:
            if proc.pgid in survivors:
                problems.append(f"{host_name}: process group {proc.pgid} ({proc.name}) survived SIGKILL")
            else:
                stopped.add((proc.host, proc.pgid))
        print(f"stopped {names} on {host_name}")
    job.update(lambda r: _mark_stopped(r, stopped, not problems))
    return problems


def _mark_stopped(record: JobRecord, stopped: Set[tuple], whole_job: bool) -> JobRecord:
    record = record.with_processes_stopped(lambda p: (p.host, p.pgid) in stopped)
    if whole_job and not record.is_final:
        record = record.with_state(JobState.STOPPED, "stopped by refinenet-launch stop")
    return record


def _wait_final(job: JobDir, timeout: float, launcher) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.read().is_final:
            return True
        if not launcher.is_alive_here():
            return job.read().is_final
        time.sleep(0.2)
    return job.read().is_final


def stop_slurm_job(job: JobDir, record: JobRecord, timeout: float) -> int:
    """A job Slurm runs: a queued one is cancelled; a running one's launcher (the batch script) gets SIGTERM
    and ends the job on every node itself (it also sees the stop request in job.json); whatever is left
    after `timeout` s goes with the whole Slurm job."""
    from launcher.slurm import jobs as slurm_jobs

    slurm_id = record.slurm["job_id"]
    submitted = bool(record.slurm.get("submitted"))
    if record.launcher is None:
        print(f"cancelling Slurm job {slurm_id} (queued, not started)")
        slurm_jobs.cancel(record)
    elif submitted:
        print(f"asking the launcher of job {record.job_id} (the batch script of Slurm job {slurm_id}) "
              f"to stop it")
        slurm_jobs.cancel(record, "--batch", "--signal=TERM")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not job.read().is_final:
        if record.launcher is None and slurm_jobs.ended(record):
            break
        time.sleep(0.2)
    if not job.read().is_final and submitted:
        print(f"job {record.job_id} did not end within {timeout:g} s: cancelling Slurm job {slurm_id}",
              file=sys.stderr)
        slurm_jobs.cancel(record)
    final = job.update(lambda r: r if r.is_final else r.with_state(
        JobState.STOPPED, f"stopped by refinenet-launch stop (Slurm job {slurm_id} cancelled)"))
    print(f"job {final.job_id}: {final.state.value}")
    return 0


def save_and_stop(job: JobDir, args: argparse.Namespace) -> int:
    """`stop --save`: the request goes into job.json, which the launcher reads every second (and a launcher
    on this machine, or a Slurm job's batch script, also gets SIGUSR1 at once); then wait for the end."""
    from launcher.spec.load import parse_cluster

    record = job.request_save()
    launcher = record.launcher
    save_s = parse_cluster(dict(record.spec), f"{job.job_file} (spec)").timeouts.save_s \
        if record.spec else 300.0
    if launcher is not None and launcher.is_alive_here():
        print(f"asking the launcher of job {record.job_id} (pid {launcher.pid}) to have its ranks save "
              f"and stop")
        try:
            os.kill(launcher.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    elif record.slurm.get("job_id") and record.launcher is not None:
        from launcher.slurm import jobs as slurm_jobs

        print(f"asking the batch script of Slurm job {record.slurm['job_id']} to have the ranks save "
              f"and stop")
        slurm_jobs.cancel(record, "--batch", "--signal=USR1")
    elif launcher is None or launcher.host == socket.gethostname():
        print(f"job {record.job_id} has no running launcher: nothing can save; stopping it", file=sys.stderr)
        args.save = False
        return run(args)
    else:
        print(f"asked the launcher of job {record.job_id} on {launcher.host} (through job.json) to have its "
              f"ranks save and stop")
    deadline = time.monotonic() + save_s + 2 * args.grace + args.timeout
    while time.monotonic() < deadline and not job.read().is_final:
        time.sleep(0.2)
    final = job.read()
    print(f"job {final.job_id}: {final.state.value}" + (f" ({final.message})" if final.message else ""))
    return 0 if final.is_final else 1


def run(args: argparse.Namespace) -> int:
    job = JobDir.resolve(args.job, args.runs_dir)
    record = job.read()
    if record.is_final:
        print(f"job {record.job_id} has already ended: {record.state.value}")
        return 0
    if args.save:
        return save_and_stop(job, args)
    record = job.request_stop()
    launcher = record.launcher
    if launcher is not None and launcher.is_alive_here():
        print(f"asking the launcher of job {record.job_id} (pid {launcher.pid}) to stop it")
        try:
            os.kill(launcher.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if _wait_final(job, args.timeout, launcher):
            print(f"job {record.job_id}: {job.read().state.value}")
            return 0
        print(f"the launcher did not end job {record.job_id} within {args.timeout:g} s; "
              f"stopping its processes directly", file=sys.stderr)
    elif record.slurm.get("job_id"):
        return stop_slurm_job(job, record, args.timeout)
    problems = stop_processes(job, args.grace)
    for problem in problems:
        print(f"refinenet-launch stop: {problem}", file=sys.stderr)
    final = job.read()
    print(f"job {final.job_id}: {final.state.value}")
    return 1 if problems else 0
