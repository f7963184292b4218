"""Run the attempts of one job: start every process of a plan, watch, tear down, restart.

One attempt: copy the plan's files to their hosts, start its processes through the hosts'
transports (scheduler first), then watch: a process that exits non-zero or by a signal, a lost
connection, an unhealthy device, or a rank with no progress (no log line, no metrics record) for
`health.hang_timeout_s` fails the whole attempt. Teardown ends every process of the attempt on
every host by process group (the backend's first signal, SIGTERM with SIGCONT so a stopped rank
can act on it, grace, SIGKILL), all in parallel; only groups this job started are signalled.
The restart policy (launcher/policy.py) then either ends the job or starts the next attempt from
the newest checkpoint that every host holds complete (launcher/resume.py), found by scanning the
hosts' manifests through their transports, and passed to every rank as `--resume PATH`.

Everything the supervisor does to processes goes through `Transport`/`RemoteProcess`, so the
policy is tested with scripted fakes (tests/unit/test_supervisor.py).
"""
from __future__ import annotations

import posixpath
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.backends import Backend, backend_for
from launcher.errors import RankFailure
from launcher.jobs import Failure, JobDir, ProcessRecord
from launcher.logs import LogAggregator, rank_source
from launcher.plan import LaunchPlan, ProcessSpec, write_plan
from launcher.policy import Action, Decision, decide
from launcher.render import TRAIN_STAGES, stage_output_dir
from launcher.resume import (
    CheckpointInfo,
    ResumeChoice,
    ScanError,
    Skipped,
    decide_resume,
    parse_scan,
    parse_skipped,
)
from launcher.spec import ClusterSpec, HostSpec
from launcher.states import JobState, RankState
from launcher.transport.base import HostError, RemoteProcess, Transport

#: `plan_factory(attempt, resume)`; `resume` maps host name -> checkpoint path on that host.
PlanFactory = Callable[..., LaunchPlan]
#: Roles whose processes carry ranks: the attempt succeeds when all of them exit 0.
#: Output that marks the rank where a multi-rank process (msrun, mpirun) went wrong.
ERROR_MARKS = ("Traceback (most recent call last)", "error:", "Error:", "Error]")
WATCHED_ROLES = ("rank", "msrun", "mpirun")
#: Lines of the failing rank's log kept in the failure report.
TAIL_LINES = 20
SCAN_TIMEOUT_S = 600.0
#: Prints the seconds since a file last changed (by the host's own clock), or `none`.
_AGE_SOURCE = ("import os, sys, time\n"
               "try:\n    print(time.time() - os.stat(sys.argv[1]).st_mtime)\n"
               "except OSError:\n    print('none')\n")


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

    @property
    def carries_ranks(self) -> bool:
        return not self.companion and self.spec.role in WATCHED_ROLES


@dataclass
class AttemptResult:
    """How one attempt ended; `timeline` holds `time.monotonic()` marks (start, started, failed, gone)."""

    number: int
    state: JobState
    failure: Optional[RankFailure] = None
    resume: Optional[ResumeChoice] = None
    teardown_s: float = 0.0
    timeline: Dict[str, float] = field(default_factory=dict)


class StopRequested(Exception):
    """The job was asked to stop (signal to the launcher, or `refinenet-launch stop`)."""


class HealthWatch:
    """Periodic health checks during an attempt; `failures()` is polled by the watch loop."""

    def failures(self) -> Sequence[RankFailure]:
        return ()

    def stop(self) -> None:
        pass


HealthFactory = Callable[[LaunchPlan, Sequence[Unit]], HealthWatch]


class Supervisor:
    """Runs a job's attempts until it succeeds, fails for good, or is stopped.

    `wait(seconds)` is the backoff sleep; it returns True when a stop was requested meanwhile
    (default: the stop event's own wait, so a signal ends the backoff at once).
    """

    def __init__(self, spec: ClusterSpec, stage: str, plan_factory: PlanFactory, job: JobDir,
                 transports: Mapping[str, Transport], logs: LogAggregator, *,
                 health_factory: Optional[HealthFactory] = None, out: IO[str] = sys.stderr,
                 poll_s: float = 0.1, wait: Optional[Callable[[float], bool]] = None):
        self.spec, self.stage, self.plan_factory = spec, stage, plan_factory
        self.job, self.transports, self.logs = job, transports, logs
        self.backend: Backend = backend_for(spec.backend)
        self.health_factory = health_factory
        self.out = out
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self._wait = wait or self.stop_event.wait
        self.restarts_used = 0
        self.results: List[AttemptResult] = []
        self.decisions: List[Decision] = []
        self._plan: Optional[LaunchPlan] = None
        self._progress: Dict[int, float] = {}
        self._lines_at_start: Dict[str, int] = {}

    # -- public

    def request_stop(self) -> None:
        """Thread- and signal-safe: end the current attempt and start no other."""
        self.stop_event.set()

    def say(self, text: str) -> None:
        """A launcher message for the user (stderr by default)."""
        print(f"refinenet-launch: {text}", file=self.out, flush=True)

    @property
    def root_cause(self) -> Optional[RankFailure]:
        """The job's first failure (the earliest one of the first failed attempt)."""
        return next((r.failure for r in self.results if r.failure is not None), None)

    def run(self) -> JobState:
        """Run attempts until a final state; returns it."""
        number = 0
        while True:
            number += 1
            result = self.run_attempt(number)
            self.results.append(result)
            stop_asked = self.stop_event.is_set() or self._stop_requested_on_disk()
            failure = result.failure
            decision = decide(result.state, restarts_used=self.restarts_used,
                              max_restarts=self.spec.restart.max_restarts, stop_requested=stop_asked,
                              exit_code=failure.exit_code if failure else None,
                              backoff_base_s=self.spec.restart.backoff_s,
                              backoff_max_s=self.spec.restart.backoff_max_s,
                              backoff_factor=self.spec.restart.backoff_factor)
            self.decisions.append(decision)
            outcome = JobState.STOPPED if decision.job_state == JobState.STOPPED else result.state
            detected = time.time() - (time.monotonic() - result.timeline["failed"])
            record = Failure.from_rank_failure(failure, at=detected) if failure else None
            self.job.end_attempt(outcome, record, job_state=decision.job_state, message=decision.reason)
            if decision.action == Action.FINISH:
                return decision.job_state
            self.restarts_used += 1
            self.say(f"attempt {number} failed: {failure}; {decision.reason} of the job, "
                     f"in {decision.delay_s:g} s")
            if self._wait(decision.delay_s) or self.stop_event.is_set():
                self.job.set_state(JobState.STOPPED, "stop requested during backoff")
                self.say("stop requested during backoff: no further attempt")
                return JobState.STOPPED

    # -- one attempt

    def run_attempt(self, number: int) -> AttemptResult:
        """Start, watch and tear down attempt `number`; later attempts of a training stage resume."""
        t0 = time.monotonic()
        timeline = {"start": t0}
        choice: Optional[ResumeChoice] = None
        if number > 1 and self.stage in TRAIN_STAGES:
            try:
                choice = self.find_resume()
            except HostError as exc:
                self.job.begin_attempt(None)
                failure = RankFailure(None, exc.host, reason=f"cannot read the checkpoint manifests there: "
                                                             f"{exc.cause}")
                timeline["failed"] = timeline["gone"] = time.monotonic()
                return AttemptResult(number, JobState.FAILED, failure, None, 0.0, timeline)
        point = choice.point if choice else None
        plan = self.plan_factory(number, dict(point.paths) if point else None)
        self._plan = plan
        self.job.set_plan(plan.to_dict())
        write_plan(plan, self.job.path)
        self.job.begin_attempt(choice.describe() if point else None)
        self.logs.start_attempt(number)
        self._lines_at_start = {src: a.lines for src, a in self.logs.activity().items()}
        self._progress = {}
        self.say(f"attempt {number}: {plan.world_size} rank(s), backend {plan.backend}"
                 + (f", resuming from {point.describe()}" if point else ""))
        units: List[Unit] = []
        health: Optional[HealthWatch] = None
        failure: Optional[RankFailure] = None
        try:
            self._copy_files(plan)
            self._start(plan, units)
            timeline["started"] = time.monotonic()
            self.job.set_state(JobState.RUNNING)
            if self.health_factory is not None:
                health = self.health_factory(plan, units)
            state, failure = self._watch(plan, units, health)
        except StopRequested:
            state = JobState.STOPPED
        except HostError as exc:
            state, failure = JobState.FAILED, RankFailure(None, exc.host, reason=f"host error: {exc.cause}")
        finally:
            timeline["failed"] = time.monotonic()
            if health is not None:
                health.stop()
            self._teardown(units)
            timeline["gone"] = time.monotonic()
            self._record_ends(units)
        teardown_s = timeline["gone"] - timeline["failed"]
        if failure is not None:
            self.logs.flush(2.0)
            if failure.rank is not None and not failure.log_tail:
                failure.log_tail = self._attempt_tail(rank_source(failure.rank))
            if units:
                self.say(f"attempt {number}: every process stopped {teardown_s:.2f} s after the failure")
        return AttemptResult(number, state, failure, choice, teardown_s, timeline)

    def _blamed_rank(self, u: Unit) -> Optional[int]:
        """The rank to blame for a process that runs several (msrun, mpirun): the first whose
        recent output shows an error, else its first rank."""
        if len(u.spec.ranks) > 1:
            for rank in u.spec.ranks:
                tail = self._attempt_tail(f"r{rank}")
                if any(mark in line for line in tail for mark in ERROR_MARKS):
                    return rank
        return u.rank

    def _attempt_tail(self, source: str) -> List[str]:
        activity = self.logs.activity().get(source)
        new = activity.lines - self._lines_at_start.get(source, 0) if activity else 0
        return self.logs.tail_of(source, min(TAIL_LINES, new))

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

    def _watch(self, plan: LaunchPlan, units: List[Unit], health: Optional[HealthWatch]
               ) -> Tuple[JobState, Optional[RankFailure]]:
        hang_s = self.spec.health.hang_timeout_s
        watched = [u for u in units if not u.companion]
        workers = [u for u in watched if u.carries_ranks]
        started = time.monotonic()
        last_disk_check = started
        while True:
            if self.stop_event.is_set():
                raise StopRequested()
            failure = self._exited_badly(watched)
            if failure is not None:
                return JobState.FAILED, failure
            if all(u.done for u in workers):
                return JobState.SUCCEEDED, None
            if hang_s:
                failure = self._hung(plan, workers, hang_s, started)
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
        """Record every process found ended; the most telling failure among them (see `_severity`)."""
        failures: List[Tuple[Tuple[int, int], RankFailure]] = []
        for order, u in enumerate(watched):
            if u.done:
                continue
            code = u.proc.poll()
            if code is None:
                continue
            u.done = True
            ok = code == 0
            self.job.set_process_state(u.spec.name, RankState.SUCCEEDED if ok else RankState.FAILED, code)
            if not ok:
                failures.append(((_severity(u, code), order), self._describe_exit(u, code)))
        return min(failures, key=lambda f: f[0])[1] if failures else None

    def _describe_exit(self, u: Unit, code: int) -> RankFailure:
        if getattr(u.proc, "connection_lost", False):
            how = f"lost the connection to {u.spec.host}"
        elif code < 0:
            how = f"killed by signal {-code} ({_signame(-code)})"
        else:
            how = f"exit code {code}"
        label = {"rank": "", "scheduler": "the scheduler", "msrun": "msrun", "mpirun": "mpirun"}
        who = label.get(u.spec.role, u.spec.name)
        reason = f"{who} ({u.spec.name}): {how}" if who else how
        rank = self._blamed_rank(u) if u.carries_ranks else None
        tail = [] if rank is not None else self._attempt_tail(u.spec.name)
        return RankFailure(rank, u.spec.host, exit_code=code if code >= 0 else None,
                           signal=-code if code < 0 else None, log_tail=tail, reason=reason)

    # -- hangs

    def _hung(self, plan: LaunchPlan, workers: Sequence[Unit], hang_s: float, started: float
              ) -> Optional[RankFailure]:
        """A running rank with no new log line for `hang_s` whose metrics file did not change either."""
        now = time.monotonic()
        activity = self.logs.last_activity()
        finished = {r for u in workers if u.done for r in u.spec.ranks}
        for slot in plan.slots:
            if slot.rank in finished:
                continue
            last = max(activity.get(slot.rank) or started, started, self._progress.get(slot.rank, started))
            if now - last <= hang_s:
                continue
            age = self._metrics_age(slot.host, slot.rank)
            if age is not None and age <= hang_s:
                self._progress[slot.rank] = now - age
                continue
            return RankFailure(slot.rank, slot.host,
                               reason=f"no progress for {now - last:.0f} s: no log line or metrics record "
                                      f"(hang timeout {hang_s:g} s)")
        return None

    def _metrics_age(self, host_name: str, rank: int) -> Optional[float]:
        """Seconds since rank `rank` last wrote a metrics record (host clock), None when unknown."""
        if self.stage not in TRAIN_STAGES:
            return None
        host = self.spec.host(host_name)
        path = posixpath.join(self._output_dir(host), "metrics", f"rank_{rank}.jsonl")
        try:
            result = self.transports[host_name].exec([host.python, "-S", "-c", _AGE_SOURCE, path],
                                                     cwd=host.workdir, timeout=30)
            return float(result.stdout.strip()) if result.ok else None
        except (HostError, ValueError):
            return None

    def _output_dir(self, host: HostSpec) -> str:
        override = self.spec.job.stage_overrides.get(self.stage, {}).get("output-dir")
        if isinstance(override, str) and override:
            return posixpath.normpath(posixpath.join(host.workdir, override))
        return stage_output_dir(self.spec, host, self.stage)

    # -- teardown

    def _teardown(self, units: Sequence[Unit]) -> None:
        """End every process of the attempt on every host, in parallel, by process group."""
        grace = self.spec.timeouts.stop_grace_s
        first = self.backend.stop_signal

        def end(u: Unit) -> None:
            proc = u.proc
            try:
                if proc.poll() is not None:
                    return
                if first != signal.SIGTERM and not u.companion:
                    proc.kill_group(first)
                    if proc.wait(grace) is not None:
                        return
                proc.kill_group(signal.SIGTERM)
                proc.kill_group(signal.SIGCONT)
                if proc.wait(grace) is None:
                    proc.kill_group(signal.SIGKILL)
                    proc.wait(grace)
            except Exception as exc:  # a host that went away: its guard ends the group itself
                self.say(f"teardown of {u.spec.name} on {u.spec.host}: {exc}")

        threads = [threading.Thread(target=end, args=(u,), name=f"teardown {u.spec.name}", daemon=True)
                   for u in units]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * grace + 5)

    def _record_ends(self, units: Sequence[Unit]) -> None:
        def change(record):
            attempt = record.current_attempt
            for u in units:
                if u.companion or u.done:
                    continue
                u.done = True
                current = attempt.process(u.spec.name) if attempt else None
                if current is not None and not current.state.is_final:
                    record = record.with_process_state(u.spec.name, RankState.STOPPED, u.proc.poll())
            return record
        self.job.update(change)

    # -- resume

    def find_resume(self) -> ResumeChoice:
        """The newest checkpoint complete on every host that saves them (the hosts of the ranks),
        read through the transports; `HostError` when a host cannot be asked."""
        assert self._plan is not None, "resume is looked up after a first attempt"
        names = sorted({slot.host for slot in self._plan.slots})

        def scan(name: str) -> Tuple[str, Optional[Sequence[CheckpointInfo]], List[Skipped]]:
            host = self.spec.host(name)
            ckpt_dir = posixpath.join(self._output_dir(host), "ckpt")
            result = self.transports[name].exec(
                [host.python, "-m", "refinenet.manifest", "scan", ckpt_dir, "--verify"], cwd=host.workdir,
                timeout=SCAN_TIMEOUT_S)
            if not result.ok:
                raise HostError(name, f"`python -m refinenet.manifest scan {ckpt_dir}` exited "
                                      f"{result.returncode}: {result.stderr.strip()[-300:]}")
            try:
                return name, parse_scan(result.stdout), parse_skipped(name, result.stderr)
            except ScanError as exc:
                raise HostError(name, str(exc)) from None

        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            found = list(pool.map(scan, names))
        choice = decide_resume({n: infos for n, infos, _ in found}, [s for _, _, sk in found for s in sk])
        for reason in choice.passed_over:
            self.say(f"checkpoint not used: {reason}")
        if choice.point is None:
            self.say("no checkpoint complete on every host: the next attempt starts from the beginning")
        else:
            fallback = " (falling back to an older one)" if choice.passed_over else ""
            self.say(f"resuming from {choice.point.describe()}{fallback}")
        return choice

    # -- helpers

    def _stop_requested_on_disk(self) -> bool:
        try:
            return self.job.read().stop_requested
        except (OSError, ValueError):
            return False


def _severity(u: Unit, code: int) -> int:
    """Among processes found ended in the same poll, which most likely failed first: a rank killed
    by a signal, then a rank that exited non-zero, then auxiliary processes (a scheduler or peer
    usually fails *because* a rank died)."""
    if u.carries_ranks:
        return 0 if code < 0 else 1
    return 2


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
