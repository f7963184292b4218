"""Run the attempts of one job: start every process of a plan, watch, tear down, restart.

One attempt: copy the plan's files to their hosts, start its processes through the hosts'
transports (scheduler first), then watch: a process that exits non-zero or by a signal, a lost
connection, an unhealthy device, or a rank silent for `hang_timeout_s` fails the whole attempt.
Teardown ends every process of the attempt on every host by process group (the backend's first
signal, SIGTERM, grace, SIGKILL), in parallel. The restart policy (launcher/policy.py) then
either ends the job or starts the next attempt from the newest checkpoint that every host holds
complete (launcher/resume.py), found by scanning the hosts' manifests through their transports.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence

from launcher.backends import Backend, backend_for
from launcher.errors import RankFailure
from launcher.jobs import Failure, JobDir, ProcessRecord
from launcher.logs import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec, write_plan
from launcher.policy import Action, decide
from launcher.render import TRAIN_STAGES, stage_output_dir
from launcher.resume import ResumePoint, ScanError, choose_resume, parse_scan, skipped_newer
from launcher.spec import ClusterSpec
from launcher.states import JobState, RankState
from launcher.transport.base import HostError, RemoteProcess, Transport

#: `plan_factory(attempt, resume)`; `resume` maps host name -> checkpoint path on that host.
PlanFactory = Callable[..., LaunchPlan]
#: Called with the running processes of an attempt; returns failures found by health checks.
HealthCheck = Callable[[], Sequence[RankFailure]]
WATCHED_ROLES = ("rank", "msrun", "mpirun")


@dataclass
class Unit:
    """A started process of an attempt (or a companion such as a worker-log tail)."""

    spec: ProcessSpec
    proc: RemoteProcess
    companion: bool = False
    done: bool = False

    @property
    def rank(self) -> Optional[int]:
        return self.spec.ranks[0] if self.spec.ranks else None


@dataclass
class AttemptResult:
    state: JobState
    failure: Optional[RankFailure] = None
    teardown_s: float = 0.0
    timeline: Dict[str, float] = field(default_factory=dict)


class StopRequested(Exception):
    """The job was asked to stop (signal to the launcher, or `refinenet-launch stop`)."""


class Supervisor:
    """Runs a job's attempts until it succeeds, fails for good, or is stopped."""

    def __init__(self, spec: ClusterSpec, stage: str, plan_factory: PlanFactory, job: JobDir,
                 transports: Mapping[str, Transport], logs: LogAggregator, *,
                 health_factory: Optional[Callable[[LaunchPlan, Sequence[Unit]], HealthWatch]] = None,
                 out: IO[str] = sys.stderr, poll_s: float = 0.1):
        self.spec, self.stage, self.plan_factory = spec, stage, plan_factory
        self.job, self.transports, self.logs = job, transports, logs
        self.backend: Backend = backend_for(spec.backend)
        self.health_factory = health_factory
        self.out = out
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.restarts_used = 0
        self.results: List[AttemptResult] = []

    # -- public

    def request_stop(self) -> None:
        """Thread- and signal-safe: end the current attempt and start no other."""
        self.stop_event.set()

    def run(self) -> JobState:
        """Run attempts until a final state; returns it."""
        resume: Optional[ResumePoint] = None
        attempt = 0
        while True:
            attempt += 1
            result = self.run_attempt(attempt, resume)
            self.results.append(result)
            stop_asked = self.stop_event.is_set() or self._stop_requested_on_disk()
            decision = decide(result.state, restarts_used=self.restarts_used,
                              max_restarts=self.spec.restart.max_restarts, stop_requested=stop_asked,
                              exit_code=result.failure.exit_code if result.failure else None,
                              backoff_base_s=self.spec.restart.backoff_s,
                              backoff_max_s=self.spec.restart.backoff_max_s,
                              backoff_factor=self.spec.restart.backoff_factor)
            failure = Failure.from_rank_failure(result.failure) if result.failure else None
            self.job.end_attempt(JobState.STOPPED if decision.job_state == JobState.STOPPED else result.state,
                                 failure, job_state=decision.job_state, message=decision.reason)
            if decision.action == Action.FINISH:
                return decision.job_state
            self.restarts_used += 1
            self._say(f"attempt {attempt} failed: {result.failure}; {decision.reason}, "
                      f"in {decision.delay_s:g} s")
            if self.stop_event.wait(decision.delay_s):
                self.job.set_state(JobState.STOPPED, "stop requested during backoff")
                return JobState.STOPPED
            resume = self.find_resume() if self.stage in TRAIN_STAGES else None

    # -- one attempt

    def run_attempt(self, number: int, resume: Optional[ResumePoint]) -> AttemptResult:
        t0 = time.monotonic()
        plan = self.plan_factory(number, dict(resume.paths) if resume else None)
        self._plan = plan
        self.job.set_plan(plan.to_dict())
        write_plan(plan, self.job.path)
        self.job.begin_attempt(resume.describe() if resume else None)
        self.logs.start_attempt(number)
        self._say(f"attempt {number}: {plan.world_size} rank(s), backend {plan.backend}"
                  + (f", resuming from {resume.describe()}" if resume else ""))
        units: List[Unit] = []
        timeline = {"start": t0}
        health: Optional[HealthWatch] = None
        try:
            self._copy_files(plan)
            self._start(plan, units)
            timeline["started"] = time.monotonic()
            self.job.set_state(JobState.RUNNING)
            if self.health_factory is not None:
                health = self.health_factory(plan, units)
            state, failure = self._watch(plan, units, health)
        except StopRequested:
            state, failure = JobState.STOPPED, None
        except HostError as exc:
            state, failure = JobState.FAILED, RankFailure(None, exc.host, reason=f"host error: {exc.cause}")
        finally:
            if health is not None:
                health.stop()
            t_fail = time.monotonic()
            self._teardown(units)
            teardown_s = time.monotonic() - t_fail
            self._record_ends(units)
        if failure is not None:
            self.logs.flush(2.0)
            if failure.rank is not None and not failure.log_tail:
                failure.log_tail = self.logs.tail(failure.rank, 20)
        timeline["ended"] = time.monotonic()
        return AttemptResult(state, failure, teardown_s, timeline)

    def _copy_files(self, plan: LaunchPlan) -> None:
        for f in plan.files:
            self.transports[f.host].write_file(f.path, f.content.encode("utf-8"), f.mode)

    def _start(self, plan: LaunchPlan, units: List[Unit]) -> None:
        ordered = sorted(plan.processes, key=lambda p: p.role != "scheduler")
        for spec in ordered:
            if self.stop_event.is_set():
                raise StopRequested()
            transport = self.transports[spec.host]
            proc = transport.run(["bash", "-c", spec.command], env=spec.env, cwd=spec.cwd,
                                 on_line=self.backend.sink(spec, plan, self.logs))
            units.append(Unit(spec, proc))
            self.job.record_process(ProcessRecord(
                name=spec.name, host=spec.host, pid=proc.pid, pgid=proc.pgid, state=RankState.RUNNING,
                rank=spec.ranks[0] if spec.role == "rank" else None, started=time.time()))
            for comp in self.backend.companions(spec, plan):
                tail = self.transports[comp.host].run(list(comp.argv), cwd=spec.cwd,
                                                      on_line=self.logs.rank_sink(comp.rank, comp.host))
                units.append(Unit(ProcessSpec(name=comp.name, host=comp.host, role="companion",
                                              ranks=(comp.rank,), command=" ".join(comp.argv), env={},
                                              cwd=spec.cwd, log_name=""), tail, companion=True))

    def _watch(self, plan: LaunchPlan, units: List[Unit], health: Optional[HealthWatch]):
        hang_s = self.spec.health.hang_timeout_s
        watched = [u for u in units if not u.companion]
        workers = [u for u in watched if u.spec.role in WATCHED_ROLES]
        started = time.time()
        last_disk_check = time.monotonic()
        while True:
            if self.stop_event.is_set():
                raise StopRequested()
            failure = self._exited_badly(watched)
            if failure is not None:
                return JobState.FAILED, failure
            if all(u.done for u in workers):
                return JobState.SUCCEEDED, None
            if hang_s:
                failure = self._hung(plan, hang_s, started)
                if failure is not None:
                    return JobState.FAILED, failure
            if health is not None:
                found = health.failures()
                if found:
                    return JobState.FAILED, found[0]
            if time.monotonic() - last_disk_check > 1.0:
                last_disk_check = time.monotonic()
                if self._stop_requested_on_disk():
                    raise StopRequested()
            time.sleep(self.poll_s)

    def _exited_badly(self, watched: Sequence[Unit]) -> Optional[RankFailure]:
        for u in watched:
            if u.done:
                continue
            code = u.proc.poll()
            if code is None:
                continue
            u.done = True
            ok = code == 0
            self.job.set_process_state(u.spec.name, RankState.SUCCEEDED if ok else RankState.FAILED, code)
            if ok:
                continue
            lost = getattr(u.proc, "connection_lost", False)
            what = {"rank": "", "scheduler": "the scheduler", "msrun": "msrun", "mpirun": "mpirun"}
            who = what.get(u.spec.role, u.spec.name)
            if lost:
                reason = f"lost the connection to {u.spec.host}"
            elif code < 0:
                reason = f"killed by signal {-code} ({_signame(-code)})"
            else:
                reason = f"exit code {code}"
            if who:
                reason = f"{who} ({u.spec.name}): {reason}"
            rank = u.rank if u.spec.role in WATCHED_ROLES else None
            tail = self.logs.tail_of(u.spec.name, 20) if rank is None else []
            return RankFailure(rank, u.spec.host, exit_code=code if code >= 0 else None,
                               signal=-code if code < 0 else None, log_tail=tail, reason=reason)
        return None

    def _hung(self, plan: LaunchPlan, hang_s: float, started: float) -> Optional[RankFailure]:
        now = time.time()
        activity = self.logs.last_activity()
        for slot in plan.slots:
            last = activity.get(slot.rank) or started
            if now - max(last, started) > hang_s:
                return RankFailure(slot.rank, slot.host,
                                   reason=f"no progress for {now - max(last, started):.0f} s "
                                          f"(hang timeout {hang_s:g} s)")
        return None

    def _teardown(self, units: Sequence[Unit]) -> None:
        """End every process of the attempt on every host, in parallel, by process group."""
        grace = self.spec.timeouts.stop_grace_s
        first = self.backend.stop_signal

        def end(u: Unit) -> None:
            try:
                if u.proc.poll() is not None:
                    return
                if first != signal.SIGTERM and not u.companion:
                    u.proc.kill_group(first)
                    if u.proc.wait(grace) is not None:
                        return
                u.proc.terminate(grace)
            except Exception as exc:  # a host that went away: its guard ends the group itself
                self._say(f"teardown of {u.spec.name} on {u.spec.host}: {exc}")

        threads = [threading.Thread(target=end, args=(u,), daemon=True) for u in units]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * grace + 5)

    def _record_ends(self, units: Sequence[Unit]) -> None:
        def change(record):
            for u in units:
                if u.companion or u.done:
                    continue
                code = u.proc.poll()
                u.done = True
                current = record.current_attempt.process(u.spec.name) if record.current_attempt else None
                if current is not None and not current.state.is_final:
                    record = record.with_process_state(u.spec.name, RankState.STOPPED, code)
            return record
        self.job.update(change)

    # -- resume

    def find_resume(self) -> Optional[ResumePoint]:
        """The newest checkpoint complete on every host that saves them (hosts of the ranks)."""
        hosts = {}
        for slot in self._plan.slots:
            hosts.setdefault(slot.host, self.spec.host(slot.host))
        scans = {}
        for name, host in hosts.items():
            ckpt_dir = stage_output_dir(self.spec, host, self.stage) + "/ckpt"
            result = self.transports[name].exec(
                [host.python, "-m", "refinenet.manifest", "scan", ckpt_dir, "--verify"], cwd=host.workdir,
                timeout=600)
            for line in result.stderr.splitlines():
                if line.strip():
                    self._say(f"checkpoints on {name}: {line.strip()}")
            if not result.ok:
                self._say(f"cannot scan checkpoints on {name} (exit {result.returncode}); starting over")
                return None
            try:
                scans[name] = parse_scan(result.stdout)
            except ScanError as exc:
                self._say(f"checkpoints on {name}: {exc}; starting over")
                return None
        point = choose_resume(scans)
        for name, newer in skipped_newer(scans, point).items():
            self._say(f"checkpoints on {name}: {', '.join(newer)} not complete on every host; not used")
        self._say(f"resuming from {point.describe()}" if point else
                  "no checkpoint complete on every host: the next attempt starts from the beginning")
        return point

    # -- helpers

    def _stop_requested_on_disk(self) -> bool:
        try:
            return self.job.read().stop_requested
        except (OSError, ValueError):
            return False

    def _say(self, text: str) -> None:
        print(f"refinenet-launch: {text}", file=self.out, flush=True)


class HealthWatch:
    """Periodic health checks during an attempt; `failures()` is polled by the watch loop."""

    def failures(self) -> Sequence[RankFailure]:
        return ()

    def stop(self) -> None:
        pass


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
