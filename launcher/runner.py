"""Launch a rendered job for real: connect and check every host, then supervise the attempts.

Before any rank starts anywhere, every host is connected and checked, all hosts at once (reachable,
authenticated, host key known, python and the workload importable there, working directory
writable, and the preflight gate of launcher/health); a failure names the host and the cause,
exit 2, and nothing was started on any host. SIGINT/SIGTERM to the launcher stop the job on every host.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import IO, List, Optional

from launcher.console import say
from launcher.errors import JobFailed
from launcher.jobs import JobDir, JobRecord, format_time
from launcher.logs.format import parse_ranks
from launcher.planning.prepare import PreparedLaunch
from launcher.planning.request import LaunchRequest
from launcher.recovery import Recovery
from launcher.slurm.allocation import ending, time_is_up, time_limit_reason
from launcher.spec.load import apply_overrides, load_yaml, parse_override
from launcher.spec.model import ClusterSpec
from launcher.startup import JobHosts, bring_up, wait_seconds
from launcher.states import JobState
from launcher.supervisor import Supervisor
from launcher.transport.probe import free_port_on


def _health_factory(hosts: JobHosts, job: JobDir):
    from launcher.health.watch import attempt_health_watch

    def factory(spec, plan, pids_by_host, ranks_by_host):
        return attempt_health_watch(spec, hosts.transports, plan, pids_by_host, ranks_by_host,
                                    job.path / "health.jsonl")
    return factory


@contextlib.contextmanager
def _stop_on_signals(supervisor: Supervisor, allocation=None):
    """SIGINT/SIGTERM/SIGHUP end the job on every host; a second SIGINT is not needed and not lost. Inside
    a Slurm allocation whose time is up, the stop says so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        why = f"{signal.Signals(signum).name} received"
        if allocation is not None and time_is_up(allocation.end_time):
            why = time_limit_reason(allocation)
            supervisor.stop_reason = why
        supervisor.say(f"{why}: stopping the job on every host")
        supervisor.request_stop()

    def save(signum, frame):
        why = "SIGUSR1 received"
        if allocation is not None:
            why += " (the Slurm allocation's time limit is near)"
        supervisor.request_save(why)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, save)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_job(prepared: PreparedLaunch, out: Optional[IO[str]] = None, err: Optional[IO[str]] = None,
            resuming: Optional[JobRecord] = None) -> int:
    """Run a prepared launch (one stage, a command, or several stages in order, each taking the previous
    one's newest checkpoint) to a final state: 0 succeeded, 1 failed (or stopped), 2 bad input. A failure
    restarts the failing stage only, from its own newest checkpoint. `resuming` (a FAILED or STOPPED job's
    record, `refinenet-launch resume`): its job folder is continued from the stage it stopped in, the
    first attempt from the newest checkpoint every host holds complete."""
    out, err = out or sys.stdout, err or sys.stderr
    request = prepared.request
    ranks = parse_ranks(request.ranks) if request.ranks else None
    hosts = bring_up(prepared.spec, prepared.job_id, prepared.workloads, prepared.pool, err,
                     wait_s=wait_seconds(request.wait))
    try:
        spec, pool = hosts.spec, hosts.host_pool
        factories = [f.with_spec(spec) if spec is not prepared.spec else f for f in prepared.factories]
        if spec.master.port == "auto" and not spec.host(spec.master.host).is_local:
            master = spec.host(spec.master.host)
            factories = [f.with_port_picker(lambda: free_port_on(hosts.transport(master.name), master.python))
                         for f in factories]
        if resuming is not None:
            factories = factories[_stage_index(prepared, resuming):]
        first_plan = factories[0](0, None)
        job = _job_dir(prepared, first_plan.to_dict(), resuming)
        say(err, f"job {job.job_id} ({job.path})")
        allocation = prepared.allocation
        if allocation is not None:
            job.set_slurm(job_id=allocation.job_id, nodes=[h.name for h in spec.hosts],
                          time_limit=allocation.time_limit, end_time=allocation.end_time)
        if pool is not None:
            job.set_hosts(pool.states())
        if hosts.leases is not None:
            job.set_leases(hosts.leases.summary())
        with job.open_logs(stream=out, ranks=ranks, straggler_factor=spec.health.straggler_factor,
                           straggler_window=spec.health.straggler_window,
                           show_framework_logs=request.show_framework_logs) as logs:
            for name, why in (pool.excluded.items() if pool is not None else ()):
                logs.note(f"host {name} excluded ({why}); its ranks run on spare {pool.replaced_by[name]}")
            supervisor = None
            for index, factory in enumerate(factories):
                if supervisor is not None:
                    factory = factory.with_spec(supervisor.spec)
                    logs.note(f"stage {factory.stage} ({index + 1} of {len(factories)}) starts")
                supervisor = Supervisor(factory, job, hosts, logs, health_factory=_health_factory(hosts, job),
                                        out=err, fanout=spec.launch.fanout, pool=pool,
                                        last_stage=index == len(factories) - 1,
                                        first_attempt=len(job.read().attempts) + 1,
                                        resume_first=resuming is not None and index == 0,
                                        allocation_ended=(lambda: ending(allocation)) if allocation else None)
                with _stop_on_signals(supervisor, allocation):
                    state = supervisor.run()
                if state != JobState.SUCCEEDED:
                    break
        return _report(job, state, supervisor, err)
    finally:
        hosts.close()


def _stage_index(prepared: PreparedLaunch, record: JobRecord) -> int:
    """Where a resumed job goes on: the stage its last attempt ran (the first stage without attempts)."""
    stages = [w.stage for w in prepared.workloads]
    last = record.attempts[-1].stage if record.attempts else ""
    return stages.index(last) if last in stages else 0


def _job_dir(prepared: PreparedLaunch, plan: dict, resuming: Optional[JobRecord] = None) -> JobDir:
    """The job's directory: a new one, the one `submit` created for this allocation to claim, or the one
    of the job `resume` continues."""
    spec, request = prepared.spec, prepared.request
    if resuming is not None:
        job = JobDir(prepared.job_dir)
        job.resume()
        job.set_plan(plan)
        return job
    spec_data = _spec_data(spec, request)
    cluster_file = str(request.cluster_path)
    if prepared.allocation is not None and request.job_dir and (Path(request.job_dir) / "job.json").exists():
        return JobDir(request.job_dir).claim(spec=spec_data, plan=plan, cluster_file=cluster_file,
                                             request=request.to_dict())
    runs = str(Path(request.job_dir).absolute().parent) if request.job_dir else request.runs_dir
    return JobDir.create(runs, cluster=spec.name, stage=prepared.label, spec=spec_data,
                         cluster_file=cluster_file, job_id=prepared.job_id, plan=plan,
                         request=request.to_dict())


def _spec_data(spec: ClusterSpec, request: LaunchRequest) -> dict:
    """The cluster file's data with the request's `--override`s applied, for `stop` to rebuild the hosts
    from job.json exactly as the launch saw them."""
    path = str(request.cluster_path)
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f.read(), path)
    except OSError:
        return spec.to_dict()
    overrides = dict(parse_override(o) for o in request.overrides)
    return apply_overrides(data, overrides, path) if overrides else data


def _report(job: JobDir, state: JobState, supervisor: Supervisor, err: IO[str]) -> int:
    record = job.read()
    for a in record.attempts:
        if a.recovery:
            say(err, f"failure of attempt {a.number} cost {Recovery.from_dict(a.recovery).describe()}")
    if state == JobState.SUCCEEDED:
        stages = list(dict.fromkeys(a.stage for a in record.attempts if a.stage))
        over = f" over {len(stages)} stages ({', '.join(stages)})" if len(stages) > 1 else ""
        say(err, f"job {job.job_id} SUCCEEDED after {len(record.attempts)} attempt(s){over}")
        return 0
    if state == JobState.STOPPED:
        say(err, f"job {job.job_id} STOPPED")
        return 1
    raise JobFailed(root_cause_summary(record), root_cause=supervisor.root_cause)


def root_cause_summary(record) -> str:
    """The first failure of the job: attempt, time, rank, host, how it ended, its last log lines;
    then one line per failed attempt."""
    lines: List[str] = [f"job {record.job_id} FAILED after {len(record.attempts)} attempt(s)"
                        f" ({record.message})"]
    first = next(((a, a.failure) for a in record.attempts if a.failure), None)
    if first:
        attempt, failure = first
        when = f" at {format_time(failure.time)}" if failure.time else ""
        lines.append(f"root cause (attempt {attempt.number}{when}): {failure.summary()}")
        if failure.log_tail:
            lines.append("last lines of its log:")
            lines.extend(f"  | {t}" for t in failure.log_tail[-20:])
    for a in record.attempts:
        if a.failure:
            lines.append(f"attempt {a.number}: {a.failure.summary()}")
    return "\n".join(lines)
