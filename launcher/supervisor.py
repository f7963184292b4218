"""Run the attempts of one job: start every host's agent, watch, tear down, restart.

The loop is plain: an attempt runs until it ends (SUCCEEDED, FAILED or STOPPED), the restart policy
(launcher/policy.py) decides, and the next attempt resumes from the newest checkpoint complete on
every host (launcher/resume.py), found by scanning the hosts' manifests through their transports while
the restart backoff runs (launcher/lookahead.py).

One attempt: render the plan, start one host agent per host (launcher/agent) through the hosts'
transports, all hosts at once (bounded width), then read the agents' events from one queue and hand
them to the `Attempt` (launcher/attempt.py), which decides. A process that exits non-zero or by a
signal, a host whose agent or connection is lost, a rank with no progress for
`health.hang_timeout_s` (`health.startup_timeout_s` before its first step; checked by each agent on its
host's clock), or an unhealthy device fails the attempt. Teardown asks every agent at once to stop its
processes (the backend's first signal, SIGTERM with SIGCONT, grace, SIGKILL of every group and
descendant) and waits for all of them.
"""
from __future__ import annotations

import dataclasses
import posixpath
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from launcher.agent.session import AgentEvent, HostAgent
from launcher.attempt import Attempt
from launcher.ckpt_copy import CopyResult, copy_checkpoint
from launcher.console import say
from launcher.errors import LeaseRefused
from launcher.exclusion import HostPool, HostTracker, NoSpareLeft
from launcher.failures import Failure, FailureKind
from launcher.fanout import DEFAULT_WIDTH, fan_out
from launcher.jobs import JobDir, ProcessRecord
from launcher.logs.aggregator import LogAggregator
from launcher.logs.format import rank_source
from launcher.logs.progress import ProgressRecorder
from launcher.lookahead import Lookahead
from launcher.plan import LaunchPlan, write_plan
from launcher.planning.factory import PlanFactory
from launcher.policy import Action, Decision, decide
from launcher.recovery import WARM_WAIT, Recovery, rolled_back
from launcher.resume import (
    CheckpointInfo,
    ResumeChoice,
    ScanError,
    Skipped,
    decide_resume,
    parse_scan,
    parse_skipped,
)
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.states import JobState, RankState
from launcher.transport.base import HostError, SweepResult, Transport
from launcher.workload.base import PROGRESS_MARK

#: A process's variables that change between attempts or ranks: a warm interpreter gets them with its
#: command, never at its start (none of them is read while the workload's modules are imported).
PER_ATTEMPT_ENV = frozenset({"MS_ROLE", "MS_NODE_ID", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM",
                             "LOCAL_RANK", "RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE", "REFINENET_RESUME",
                             "REFINENET_SAVE_REQUEST", "REFINENET_COMPILE_CACHE"})
#: Output that marks the rank where a multi-rank process (msrun, mpirun) went wrong.
ERROR_MARKS = ("Traceback (most recent call last)", "error:", "Error:", "Error]")
#: Lines of the failing rank's log kept in the failure report.
TAIL_LINES = 20
SCAN_TIMEOUT_S = 600.0
#: How often the job record gets the processes started since the last write.
RECORD_EVERY_S = 0.5
#: How long after every rank's first progress line the workload's own first-step events are awaited.
FIRST_STEP_EVENT_WAIT_S = 5.0


@dataclass
class AttemptResult:
    """How one attempt ended; `timeline` holds `time.monotonic()` marks (start, started, failed, gone)."""

    number: int
    state: JobState
    failure: Optional[Failure] = None
    resume: Optional[ResumeChoice] = None
    teardown_s: float = 0.0
    timeline: Dict[str, float] = field(default_factory=dict)
    #: Wall-clock moments: the failure reached the launcher, every process was gone.
    detected_at: Optional[float] = None
    gone_at: Optional[float] = None
    #: The ranks' `saved_on_request` events (their metrics records), one per rank that sent one.
    saved: Tuple[Mapping[str, Any], ...] = ()


class HealthWatch:
    """Periodic health checks during an attempt; `failures()` is polled by the watch loop."""

    def failures(self) -> Sequence[Failure]:
        return ()

    def stop(self) -> None:
        pass


#: `health_factory(spec, plan, pids_by_host, ranks_by_host) -> HealthWatch` (spec: the active hosts)
HealthFactory = Callable[[ClusterSpec, LaunchPlan, Mapping[str, List[int]], Mapping[str, List[int]]],
                         HealthWatch]


class HostAccess(Protocol):
    """What the supervisor needs of the job's hosts (launcher.startup.JobHosts): each host's agent (started
    again when lost), its transport, a sweep of what is left of the job on it, and the hosts joining and
    leaving the job."""

    def agent(self, name: str) -> HostAgent: ...

    def transport(self, name: str) -> Transport: ...

    def sweep(self, name: str) -> SweepResult: ...

    def take(self, host: HostSpec) -> None: ...

    def leave(self, name: str) -> None: ...

    def record_exclusion(self, name: str, reason: str, job_id: str, out: IO[str]) -> None: ...

    def warm(self, processes: Mapping[str, Sequence[Mapping[str, Any]]]) -> None: ...


class Supervisor:
    """Runs a job's attempts until it succeeds, fails for good, or is stopped.

    `wait(seconds)` is the backoff sleep; it returns True when a stop was requested meanwhile
    (default: the stop event's own wait, so a signal ends the backoff at once). `clock` is the
    wall clock used for the times of events the launcher itself observes.
    """

    def __init__(self, plan_factory: PlanFactory, job: JobDir, hosts: HostAccess, logs: LogAggregator, *,
                 health_factory: Optional[HealthFactory] = None,
                 out: IO[str] = sys.stderr, poll_s: float = 0.1,
                 wait: Optional[Callable[[float], bool]] = None,
                 fanout: int = DEFAULT_WIDTH, clock: Callable[[], float] = time.time,
                 pool: Optional[HostPool] = None, last_stage: bool = True, first_attempt: int = 1,
                 allocation_ended: Optional[Callable[[], str]] = None, resume_first: bool = False):
        self.plan_factory = plan_factory
        self.spec, self.stage, self.workload = plan_factory.spec, plan_factory.stage, plan_factory.workload
        #: Active, spare and excluded hosts; None when the cluster has no spares (nothing to exclude).
        self.pool = pool
        self.tracker = HostTracker(self.spec.restart.exclude_after)
        self.copies: List[CopyResult] = []
        #: False for a stage that other stages follow: its success leaves the job RUNNING.
        self.last_stage = last_stage
        self.first_attempt = first_attempt
        #: The first attempt continues a job that ended (`resume`): it too starts from a checkpoint.
        self.resume_first = resume_first
        self.job, self.hosts, self.logs = job, hosts, logs
        self.backend = plan_factory.backend
        self.health_factory = health_factory
        self.out = out
        self.poll_s = poll_s
        self.fanout = fanout
        self.clock = clock
        self.stop_event = threading.Event()
        #: Why the ranks are asked to save a checkpoint and stop ("" while they are not).
        self.save_reason = ""
        #: Set when a signal came because the Slurm allocation's time is up: the job then fails with it.
        self.stop_reason = ""
        #: Inside a Slurm allocation: why it is ending ("" while it is not); a failed attempt then ends
        #: the job with that reason instead of restarting.
        self.allocation_ended = allocation_ended
        self._wait = wait or self.stop_event.wait
        self.restarts_used = 0
        self.results: List[AttemptResult] = []
        self.decisions: List[Decision] = []
        self._plan: Optional[LaunchPlan] = None
        #: Host -> the process entries (warm specs included) of the last attempt's agent document.
        self._processes: Dict[str, List[Dict[str, Any]]] = {}
        self._lines_at_start: Dict[str, int] = {}
        #: What the last failure is costing, until the next attempt's first step (launcher.recovery).
        self.recovery: Optional[Recovery] = None
        #: The stacks' verdict of the last attempt's hang (launcher.stacks), for its root cause, and the one
        #: rank (rank, host) it found stuck, if it found exactly one.
        self._stack_summary = ""
        self._stack_suspect: Optional[Tuple[int, str]] = None
        #: The next attempt's resume point, looked for during the restart backoff.
        self._lookahead: Optional[Lookahead[ResumeChoice]] = None

    # -- public

    def request_stop(self) -> None:
        """Thread- and signal-safe: end the current attempt and start no other."""
        self.stop_event.set()

    def request_save(self, why: str) -> None:
        """Thread- and signal-safe: the ranks finish their current step, save a checkpoint and stop; the
        job then ends STOPPED (`refinenet-launch resume JOB` continues it). A job whose ranks do not
        stop within `timeouts.save_s` is stopped without it."""
        if not self.save_reason:
            self.save_reason = why

    def say(self, text: str) -> None:
        """A launcher message for the user (stderr by default), written whole: one write per line, so it
        never runs together with the live stream when both share a terminal."""
        say(self.out, text)

    @property
    def root_cause(self) -> Optional[Failure]:
        """The job's first failure (the root cause of the first failed attempt)."""
        return next((r.failure for r in self.results if r.failure is not None), None)

    def run(self) -> JobState:
        """Run attempts until a final state; returns it."""
        number = self.first_attempt - 1
        while True:
            number += 1
            result = self.run_attempt(number)
            self.results.append(result)
            decision = self.decide(result)
            self.decisions.append(decision)
            outcome = JobState.STOPPED if decision.job_state == JobState.STOPPED else result.state
            failure = result.failure
            self._close_recovery()
            if failure is not None:
                self.recovery = Recovery(number, failed_at=failure.time or result.detected_at,
                                         detected_at=result.detected_at, gone_at=result.gone_at)
            job_state = decision.job_state
            if job_state == JobState.SUCCEEDED and not self.last_stage:
                job_state = JobState.RUNNING
            self.job.end_attempt(outcome, failure, job_state=job_state, message=decision.reason)
            if decision.action == Action.FINISH:
                return decision.job_state
            if not self._exclude_if_needed(failure):
                return JobState.FAILED
            if self.spec.restart.warm_start:
                active = {h.name for h in self.spec.hosts}
                self.hosts.warm({h: procs for h, procs in self._processes.items() if h in active})
            self.restarts_used += 1
            self.say(f"attempt {number} failed: {failure}; {decision.reason} of the job, "
                     f"in {decision.delay_s:g} s")
            if self.workload.resumable:
                self._lookahead = Lookahead(self.find_resume, name="resume-point")
            if self._wait(decision.delay_s) or self.stop_event.is_set() or self._save_asked():
                self.job.set_state(JobState.STOPPED, "stop requested during backoff")
                self.say("stop requested during backoff: no further attempt")
                return JobState.STOPPED

    def _exclude_if_needed(self, failure: Optional[Failure]) -> bool:
        """Take out a host the policy blames and move its ranks to a spare; False when none is left
        (the job then ends FAILED, its message naming every excluded host and why)."""
        if self.pool is None:
            return True
        exclusion = self.tracker.observe(failure)
        if exclusion is None:
            return True
        try:
            spare = self.pool.exclude(exclusion.host, exclusion.reason)
        except NoSpareLeft as exc:
            self.job.set_hosts(self.pool.states())
            self.job.set_state(JobState.FAILED, str(exc))
            self.say(str(exc))
            self.logs.note(str(exc))
            return False
        self.tracker.streak.clear()
        self.hosts.record_exclusion(exclusion.host, exclusion.reason, self.job.job_id, self.out)
        try:
            self.hosts.take(spare)
        except HostError as exc:
            text = f"spare {spare.name} cannot take host {exclusion.host}'s ranks: {exc.cause}"
            self.job.set_hosts(self.pool.states())
            self.job.set_state(JobState.FAILED, text)
            self.say(text)
            self.logs.note(text)
            return False
        self.hosts.leave(exclusion.host)
        self.spec = self.pool.spec
        self.plan_factory = self.plan_factory.with_spec(self.spec)
        self.job.set_hosts(self.pool.states())
        text = (f"host {exclusion.host} excluded ({exclusion.reason}); its ranks move to spare "
                f"{spare.name}")
        self.say(text)
        self.logs.note(text)
        return True

    def decide(self, result: AttemptResult) -> Decision:
        """The restart policy's answer for how `result` ended."""
        stop_asked = self.stop_event.is_set() or self._stop_requested_on_disk()
        failure = result.failure
        if self.save_reason:
            saved = f"the ranks saved {describe_saved(result.saved)}" if result.state == JobState.SUCCEEDED \
                else "the ranks did not save (the newest checkpoint stands)"
            return Decision(Action.FINISH, JobState.STOPPED,
                            reason=f"stopped on request ({self.save_reason}): {saved}; continue it with "
                                   f"`refinenet-launch resume {self.job.job_id}`")
        if result.state != JobState.SUCCEEDED and self.allocation_ended is not None:
            # the allocation ending (its time limit; cancelled by someone else) fails the job with that
            # reason; a stop asked of the launcher (stop, scancel of its allocation) stays a stop
            ended = self.stop_reason or self.allocation_ended()
            if ended and (self.stop_reason or not stop_asked):
                return Decision(Action.FINISH, JobState.FAILED, reason=ended)
        restart = self.spec.restart
        return decide(result.state, restarts_used=self.restarts_used, max_restarts=restart.max_restarts,
                      stop_requested=stop_asked, exit_code=failure.exit_code if failure else None,
                      backoff_base_s=restart.backoff_s, backoff_max_s=restart.backoff_max_s,
                      backoff_factor=restart.backoff_factor)

    # -- one attempt

    def run_attempt(self, number: int) -> AttemptResult:
        """Start, watch and tear down attempt `number`; later attempts of a training stage resume."""
        timeline = {"start": time.monotonic()}
        if self.recovery is not None:
            self.recovery = self.recovery.with_moments(next_at=time.time())
        choice: Optional[ResumeChoice] = None
        if (number > self.first_attempt or self.resume_first) and self.workload.resumable:
            try:
                choice = self._resume_point()
            except HostError as exc:
                self.job.begin_attempt(None, stage=self.stage)
                failure = Failure(FailureKind.SCAN, exc.host, f"cannot read or carry the checkpoints there: "
                                                              f"{exc.cause}", time=self.clock())
                timeline["failed"] = timeline["gone"] = time.monotonic()
                return AttemptResult(number, JobState.FAILED, failure, None, 0.0, timeline,
                                     detected_at=time.time(), gone_at=time.time())
        point = choice.point if choice else None
        if self.recovery is not None:
            self.recovery = self.recovery.with_moments(resume_at=time.time(),
                                                       steps_rolled_back=self._rolled_back(point))
        plan = self.plan_factory(number, dict(point.paths) if point else None)
        self._plan = plan
        self.job.set_plan(plan.to_dict())
        write_plan(plan, self.job.path)
        self.job.begin_attempt(choice.describe() if point else None, stage=self.stage)
        self.logs.start_attempt(number)
        self._lines_at_start = {src: a.lines for src, a in self.logs.activity().items()}
        self.say(f"attempt {number}: {plan.world_size} rank(s) on {len(plan.hosts)} host(s), backend "
                 f"{plan.backend}" + (f", resuming from {point.describe()}" if point else ""))
        run = _AttemptRun(self, Attempt(number, plan, self.backend))
        try:
            run.start()
            timeline["started"] = time.monotonic()
            if not run.attempt.finished:
                self.job.set_state(JobState.RUNNING)
            run.watch()
            run.stacks_if_hung()
        finally:
            timeline["failed"] = time.monotonic()
            run.teardown()
            timeline["gone"] = time.monotonic()
            run.record_ends()
        attempt = run.attempt
        failure = attempt.root_cause if attempt.outcome == JobState.FAILED else None
        if failure is not None and failure.host in run.unsweepable:
            failure = dataclasses.replace(failure, kind=FailureKind.UNREACHABLE,
                                          reason=f"{failure.reason}; the host could not be swept "
                                                 f"({run.unsweepable[failure.host]})")
        teardown_s = timeline["gone"] - timeline["failed"]
        if failure is not None:
            self.logs.flush(2.0)
            failure = self._complete(failure, attempt)
            self.say(f"attempt {number}: every process stopped {teardown_s:.2f} s after the failure")
        state = attempt.outcome or JobState.STOPPED
        return AttemptResult(number, state, failure, choice, teardown_s, timeline,
                             detected_at=run.detected_at, gone_at=time.time(),
                             saved=tuple(run.saved.values()))

    # -- what a failure cost

    def _rolled_back(self, point) -> Optional[int]:
        """Steps the next attempt computes again: the failed attempt's furthest step past `point`."""
        progress = self._progress()
        furthest = progress.furthest.get(self.recovery.attempt) if progress else None
        if point is not None:
            return rolled_back(furthest, point.steps_per_epoch, point.global_step)
        if furthest is not None and furthest[0] == 1:
            return furthest[1]
        return None

    def _progress(self) -> Optional[ProgressRecorder]:
        return next((o for o in getattr(self.logs, "observers", ()) if isinstance(o, ProgressRecorder)), None)

    def note_recovery(self, run: _AttemptRun) -> None:
        """Called by the watch loop: the next attempt's moments as they come; recorded at its first step."""
        if self.recovery is None or self.recovery.first_step_at is not None:
            return
        moments = run.recovery_moments()
        if moments:
            self.recovery = self.recovery.with_moments(**moments)
        if self.recovery.first_step_at is not None:
            self._close_recovery()

    def _close_recovery(self) -> None:
        """Record the pending recovery with what is known of it (all of it once the first step came)."""
        recovery, self.recovery = self.recovery, None
        if recovery is None or recovery.next_at is None:
            self.recovery = recovery
            return
        self.job.set_recovery(recovery.attempt, recovery.to_dict())
        text = f"recovery from attempt {recovery.attempt}'s failure: {recovery.describe()}"
        self.say(text)
        self.logs.note(text)

    def _complete(self, failure: Failure, attempt: Attempt) -> Failure:
        """The root cause completed: the rank of a multi-rank process named from its output, the log tail;
        a hang blamed on the rank the stacks found stuck (the hang check fires on every silent rank, and
        the ones waiting for it in a collective fall silent with it)."""
        if failure.kind == FailureKind.HANG and self._stack_summary:
            failure = self._blame_stuck_rank(failure)
        rank = failure.rank
        member = next((m for m in attempt.members.values() if m.spec.host == failure.host
                       and m.rank == failure.rank and len(m.spec.ranks) > 1), None)
        if member is not None:
            for candidate in member.spec.ranks:
                tail = self._attempt_tail(rank_source(candidate))
                if any(mark in line for line in tail for mark in ERROR_MARKS):
                    rank = candidate
                    break
        log_tail = failure.log_tail
        if not log_tail:
            if rank is not None:
                log_tail = tuple(self._attempt_tail(rank_source(rank)))
            else:
                aux = next((m for m in attempt.members.values() if m.spec.host == failure.host
                            and not m.carries_ranks and m.state == RankState.FAILED), None)
                if aux is not None:
                    log_tail = tuple(self._attempt_tail(aux.spec.name))
        return dataclasses.replace(failure, rank=rank, log_tail=log_tail)

    def _blame_stuck_rank(self, failure: Failure) -> Failure:
        reason = f"{failure.reason}; stacks: {self._stack_summary}"
        suspect = self._stack_suspect
        if suspect is None or suspect == (failure.rank, failure.host):
            return dataclasses.replace(failure, reason=reason)
        checked = f"rank {failure.rank}" if failure.rank is not None else failure.who or "a process"
        return dataclasses.replace(failure, rank=suspect[0], host=suspect[1], who="", log_tail=(),
                                   reason=f"{reason} (the hang check fired on {checked} on {failure.host} "
                                          f"first)")

    def _attempt_tail(self, source: str) -> List[str]:
        activity = self.logs.activity().get(source)
        new = activity.lines - self._lines_at_start.get(source, 0) if activity else 0
        return self.logs.tail_of(source, min(TAIL_LINES, new))

    # -- what each host's agent gets

    def host_document(self, plan: LaunchPlan, host: str) -> Tuple[Dict[str, Any], list, list]:
        """(document, output sinks, tail sinks) of `host`'s agent for `plan`."""
        spec_host = self.spec.host(host)
        procs = plan.processes_on(host)
        processes, sinks, tails, tail_sinks = [], [], [], []
        for p in procs:
            argv = ["bash", "--norc", "--noprofile", "-c", p.command]
            entry: Dict[str, Any] = {"name": p.name, "argv": argv, "env": dict(p.env), "cwd": p.cwd,
                                     "watch": self.backend.watches(p)}
            metrics = p.role == "rank" and self.workload.metrics_file(self.spec, spec_host, p.ranks[0])
            if metrics:
                entry["metrics"] = metrics
            warm = self._warm_spec(p)
            if warm:
                entry["warm"] = warm
            processes.append(entry)
            sinks.append(self.backend.sink(p, plan, self.logs))
            for t in self.backend.tails(p, plan):
                tails.append({"path": t.path, "watch": True, "rank": t.rank, "process": p.name})
                tail_sinks.append(self.logs.rank_sink(t.rank, host))
        files = [{"path": f.path, "content": f.content, "mode": f.mode} for f in plan.files_on(host)]
        health = self.spec.health
        document = {"job_id": plan.job_id, "attempt": plan.attempt, "host": host,
                    "grace": self.spec.timeouts.stop_grace_s, "hang_s": health.hang_timeout_s,
                    "startup_s": health.startup_timeout_s, "progress": PROGRESS_MARK,
                    "files": files, "processes": processes, "tails": tails}
        return document, sinks, tail_sinks

    def _warm_spec(self, proc) -> Optional[Dict[str, Any]]:
        """How the host's agent may start `proc` from a warm interpreter (launcher/hostside/warm.py): the
        modules it imports ahead, the environment it starts with (job-wide variables: what is read while
        importing), and the `python -m MODULE ARGS` it runs then; None when it always starts cold (also when
        the cluster file says `restart.warm_start: false`)."""
        if not self.spec.restart.warm_start:
            return None
        modules = self.workload.warm_modules(proc.role)
        argv = list(proc.argv)
        if not (modules and self.backend.warm_starts and len(argv) > 2 and argv[1] == "-m"):
            return None
        start_env = {k: v for k, v in proc.env.items() if k not in PER_ATTEMPT_ENV}
        return {"python": argv[0], "argv": argv[1:], "main": argv[2], "modules": list(modules),
                "start_env": start_env}

    # -- resume

    def _resume_point(self) -> ResumeChoice:
        """The resume point looked for during the backoff (its messages said now), else looked for now; a
        host that could not be asked during the backoff is asked again."""
        ahead, self._lookahead = self._lookahead, None
        if ahead is not None:
            try:
                return ahead.take(self._tell)
            except HostError:
                pass
        return self.find_resume()

    def _tell(self, text: str, note: bool = False) -> None:
        """Say `text`; with `note`, also into the job's log."""
        self.say(text)
        if note:
            self.logs.note(text)

    def find_resume(self, tell: Optional[Callable[..., None]] = None) -> ResumeChoice:
        """The newest checkpoint complete on every host that saves them (the hosts of the ranks),
        read through the transports, all hosts at once; `HostError` when a host cannot be asked. Its
        messages go to `tell(text, note=False)` (default: said, and noted in the job's log with `note`).
        Every process of the last attempt must be gone (the checkpoints no longer change)."""
        tell = tell or self._tell
        active = {h.name for h in self.spec.hosts}
        ran = {slot.host for slot in (self._plan or self.plan_factory).slots}
        names = sorted(ran & active)
        fresh = sorted(h for h in (slot.host for slot in self.plan_factory.slots) if h not in ran)

        def scan(name: str) -> Tuple[Optional[Sequence[CheckpointInfo]], List[Skipped]]:
            host = self.spec.host(name)
            ckpt_dir = self.workload.checkpoint_dir(self.spec, host)
            argv = self.workload.scan_argv(host, ckpt_dir)
            result = self.hosts.transport(name).exec(argv, cwd=host.workdir, timeout=SCAN_TIMEOUT_S)
            if not result.ok:
                raise HostError(name, f"`{' '.join(argv[1:])}` exited "
                                      f"{result.returncode}: {result.stderr.strip()[-300:]}")
            try:
                return parse_scan(result.stdout), parse_skipped(name, result.stderr)
            except ScanError as exc:
                raise HostError(name, str(exc)) from None

        # On shared storage every host sees the one copy: one scan stands for all of them.
        scanned = names[:1] if self.spec.storage == "shared" else names
        found = fan_out(scan, scanned, key=str, width=self.fanout, catch=(HostError,))
        if found.failed:
            raise found.failed[sorted(found.failed)[0]]
        scans = {n: list(found.succeeded[n if n in found.succeeded else names[0]][0]) for n in names}
        skipped = [s for n in scanned for s in found.succeeded[n][1]]
        while True:
            choice = decide_resume(scans, skipped)
            refused = self._verify(choice.point, scanned) if choice.point is not None else []
            if not refused:
                break
            for item in refused:
                skipped.append(item)
                gone = {n for n in names if self.spec.storage == "shared" or n == item.host}
                for n in gone:
                    scans[n] = [c for c in scans[n] if c.name != item.name]
        for reason in choice.passed_over:
            tell(f"checkpoint not used: {reason}")
        if choice.point is None:
            tell("no checkpoint complete on every host: the next attempt starts from the beginning")
        else:
            fallback = " (falling back to an older one)" if choice.passed_over else ""
            tell(f"resuming from {choice.point.describe()}{fallback}")
            if fresh:
                choice = self._carry_to(choice, names[0], fresh, tell)
        return choice

    def _verify(self, point, hosts: Sequence[str]) -> List[Skipped]:
        """The resume checkpoint's bytes checked against its recorded digest on each of `hosts`, all at
        once: the hosts whose copy is not whole."""
        def verify(name: str) -> Optional[Skipped]:
            host = self.spec.host(name)
            argv = self.workload.verify_argv(host, point.paths[name])
            result = self.hosts.transport(name).exec(argv, cwd=host.workdir, timeout=SCAN_TIMEOUT_S)
            if result.ok:
                return None
            lines = (result.stdout.strip() + "\n" + result.stderr.strip()).strip().splitlines()
            why = lines[-1].split(": ", 2)[-1] if lines else f"exit code {result.returncode}"
            return Skipped(name, point.paths[name], f"does not match its manifest ({why})")

        checked = fan_out(verify, list(hosts), key=str, width=self.fanout, catch=(HostError,))
        if checked.failed:
            raise checked.failed[sorted(checked.failed)[0]]
        return [s for s in checked.succeeded.values() if s is not None]

    def _carry_to(self, choice: ResumeChoice, source: str, hosts: Sequence[str],
                  tell: Callable[..., None]) -> ResumeChoice:
        """Copy the resume checkpoint from `source` to each of `hosts` (spares that hold none) and verify
        it there; the choice with their paths added. `HostError` naming the host on failure."""
        point = choice.point
        paths = dict(point.paths)

        def carry(name: str) -> CopyResult:
            target_dir = self.workload.checkpoint_dir(self.spec, self.spec.host(name))
            return copy_checkpoint(self.hosts.transport(source), point.paths[source],
                                   self.hosts.transport(name), target_dir)

        done = fan_out(carry, hosts, key=str, width=self.fanout, catch=(HostError, OSError))
        for name, exc in done.failed.items():
            raise exc if isinstance(exc, HostError) else HostError(name, f"copying the checkpoint: {exc}")
        for name in hosts:
            copy = done.succeeded[name]
            self.copies.append(copy)
            paths[name] = copy.path
            tell(copy.describe(), note=True)
        return dataclasses.replace(choice, point=dataclasses.replace(point, paths=paths))

    # -- helpers

    def _stop_requested_on_disk(self) -> bool:
        try:
            return self.job.read().stop_requested
        except (OSError, ValueError):
            return False

    def _save_asked(self) -> bool:
        """A save request came (a signal, or `stop --save` recorded in job.json)."""
        if not self.save_reason:
            try:
                if self.job.read().save_requested:
                    self.save_reason = "refinenet-launch stop --save"
            except (OSError, ValueError):
                pass
        return bool(self.save_reason)


class _AttemptRun:
    """The I/O of one attempt: agents, their events, the job record, health, teardown."""

    def __init__(self, sup: Supervisor, attempt: Attempt):
        self.sup = sup
        self.attempt = attempt
        self.plan = attempt.plan
        self.events: queue.Queue[AgentEvent] = queue.Queue()
        self.agents: Dict[str, HostAgent] = {}
        self.names: Dict[str, List[str]] = {}
        self.tails: Dict[str, List[dict]] = {}
        self.pending_records: List[ProcessRecord] = []
        self.finished_records: List[Tuple[str, RankState, Optional[int]]] = []
        self.health: Optional[HealthWatch] = None
        self.done_hosts: set = set()
        self.lost_hosts: set = set()
        #: Lost hosts where nothing could make sure that no process of the job is left (host -> why).
        self.unsweepable: Dict[str, str] = {}
        #: When the attempt's outcome became known to the launcher (wall clock).
        self.detected_at: Optional[float] = None
        #: When the ranks asked to save and stop must be done (monotonic), once asked.
        self.save_deadline: Optional[float] = None
        #: Process name -> when it started (its host's clock), whether from a warm interpreter, and how long
        #: taking that interpreter took (waiting for its imports to finish included).
        self.started_at: Dict[str, float] = {}
        self.warm: Dict[str, bool] = {}
        self.warm_s: Dict[str, Tuple[str, float]] = {}
        #: Process name -> the workload's event name -> its time (its host's clock).
        self.workload_events: Dict[str, Dict[str, float]] = {}
        #: Process name -> its `saved_on_request` event.
        self.saved: Dict[str, Mapping[str, Any]] = {}

    # -- start

    def start(self) -> None:
        sup = self.sup
        documents = {}
        sup._processes = {}
        for host in self.plan.hosts:
            if not self.plan.processes_on(host) and not self.plan.files_on(host):
                continue
            documents[host] = sup.host_document(self.plan, host)
            sup._processes[host] = documents[host][0]["processes"]
            self.names[host] = [p["name"] for p in documents[host][0]["processes"]]
            self.tails[host] = documents[host][0]["tails"]

        def start_one(host: str) -> HostAgent:
            if sup.stop_event.is_set():
                raise _Skipped()
            document, sinks, tail_sinks = documents[host]
            agent = sup.hosts.agent(host)
            agent.begin_attempt(self.attempt.number, document, sinks, tail_sinks, self.events)
            return agent

        for host in documents:
            self.attempt.starting(host)
        started = fan_out(start_one, list(documents), key=str, width=sup.fanout, catch=(Exception,))
        self.agents = dict(started.succeeded)
        now = sup.clock()
        for host, exc in sorted(started.failed.items()):
            if isinstance(exc, _Skipped):
                continue
            cause = exc.cause if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, LeaseRefused):
                self.attempt.host_lost(host, cause, now, kind=FailureKind.LEASE)
                continue
            self.attempt.host_lost(host, f"cannot start the host agent: {cause}", now,
                                   kind=FailureKind.UNREACHABLE)
        if sup.stop_event.is_set():
            self.attempt.stop()

    # -- watch

    def watch(self) -> None:
        sup = self.sup
        last_record = last_disk_check = time.monotonic()
        while not self.attempt.finished:
            try:
                event = self.events.get(timeout=sup.poll_s)
            except queue.Empty:
                event = None
            if event is not None:
                self.handle(event)
                self._drain()
            if sup.stop_event.is_set():
                self.attempt.stop()
            if self.attempt.finished and self.detected_at is None:
                self.detected_at = time.time()
            sup.note_recovery(self)
            mono = time.monotonic()
            if self.health is None and sup.health_factory is not None and self.attempt.all_started():
                self.health = sup.health_factory(sup.spec, self.plan, *self._pids_and_ranks())
            if self.health is not None:
                for failure in self.health.failures():
                    self.attempt.failed(failure)
            if mono - last_record >= RECORD_EVERY_S:
                last_record = mono
                self.flush_records()
            if mono - last_disk_check > 1.0:
                last_disk_check = mono
                if sup._stop_requested_on_disk():
                    self.attempt.stop()
                sup._save_asked()
            if sup.save_reason and self.save_deadline is None and not self.attempt.finished:
                self.ask_to_save()
            if self.save_deadline is not None and mono > self.save_deadline and not self.attempt.finished:
                sup.say(f"the ranks did not save and stop within {sup.spec.timeouts.save_s:g} s: "
                        f"stopping them")
                self.attempt.stop()
        self._drain()
        self.attempt.close_decision()

    def _drain(self) -> None:
        while True:
            try:
                self.handle(self.events.get_nowait())
            except queue.Empty:
                return

    def handle(self, event: AgentEvent) -> None:
        kind, host, data = event.kind, event.host, event.data
        names = self.names.get(host, [])
        at = float(data.get("t") or self.sup.clock())
        if kind == "started":
            m = self.attempt.started(names[event.index], int(data["pid"]), int(data["pgid"]), at)
            self.started_at[m.spec.name] = at
            self.warm[m.spec.name] = bool(data.get("warm"))
            if isinstance(data.get("warm_s"), (int, float)):
                self.warm_s[m.spec.name] = (host, float(data["warm_s"]))
            self.pending_records.append(ProcessRecord(
                name=m.spec.name, host=host, pid=m.pid, pgid=m.pgid, state=RankState.RUNNING,
                rank=m.spec.ranks[0] if m.spec.role == "rank" else None, started=at))
        elif kind == "exit":
            name = names[event.index]
            status = int(data["status"])
            m = self.attempt.exited(name, status, at)
            self.finished_records.append((name, m.state, status))
        elif kind == "error":
            self.sup.say(f"{host}: {data.get('message')}")
        elif kind == "hang":
            hang_s = self.sup.spec.health.hang_timeout_s or 0.0
            if "tail" in data:
                tail = self.tails[host][int(data["tail"])]
                self.attempt.hung(tail["process"], float(data["silent_s"]), hang_s, at, rank=tail["rank"])
            else:
                self.attempt.hung(names[event.index], float(data["silent_s"]), hang_s, at)
        elif kind == "note":
            self.sup.say(f"{host}: {data.get('message')}")
        elif kind == "workload":
            record = data.get("record") or {}
            if isinstance(record.get("time"), (int, float)):
                events = self.workload_events.setdefault(names[event.index], {})
                events.setdefault(str(record.get("event")), float(record["time"]))
                for field_name in ("main_s", "init_s", "load_s"):
                    if isinstance(record.get(field_name), (int, float)):
                        events.setdefault(field_name, float(record[field_name]))
            if record.get("event") == "saved_on_request":
                self.saved[names[event.index]] = record
        elif kind == "done":
            self.done_hosts.add(host)
        elif kind == "lost":
            self.done_hosts.add(host)
            self.lost_hosts.add(host)
            if any(not m.state.is_final for m in self.attempt.on_host(host)):
                self.attempt.host_lost(host, str(data.get("detail")), self.sup.clock())

    def stacks_if_hung(self) -> None:
        """A hang: every rank's Python stack, taken on every host at once before the teardown, saved in
        the job folder (JOB/stacks/), and the rank(s) whose stack differs named in the root cause."""
        sup = self.sup
        sup._stack_summary, sup._stack_suspect = "", None
        cause = self.attempt.root_cause
        if cause is None or cause.kind != FailureKind.HANG:
            return
        report, folder = capture_stacks(self.attempt, self.agents, sup.job.path, sup.fanout)
        if report is None:
            return
        sup._stack_summary = report.summary().replace("\n", "; ")
        if len(report.suspects) == 1:
            sup._stack_suspect = report.suspects[0]
        sup.say(f"stacks of every rank at the hang ({folder}):")
        for line in report.summary().splitlines():
            sup.say(f"  {line}")

    def ask_to_save(self) -> None:
        """Every host's ranks get their save request (their REFINENET_SAVE_REQUEST file is created)."""
        sup = self.sup
        self.save_deadline = time.monotonic() + sup.spec.timeouts.save_s
        sup.say(f"{sup.save_reason}: the ranks finish their step, save a checkpoint and stop")
        for host, agent in self.agents.items():
            paths = {p.env.get("REFINENET_SAVE_REQUEST") for p in self.plan.processes_on(host)} - {None}
            for path in paths:
                agent.save(path)

    def recovery_moments(self) -> Dict[str, Any]:
        """What this attempt tells of the recovery before it: when every process had started, every rank
        was configured (its cluster formed, its checkpoint loaded) and every rank's first step was done,
        from the workload's events (else from its first progress line); how the processes started."""
        ranks = [m for m in self.attempt.members.values() if m.carries_ranks]
        moments: Dict[str, Any] = {}
        if ranks and all(m.spec.name in self.started_at for m in self.attempt.members.values()):
            moments["started_at"] = max(self.started_at.values())
            flags = {self.warm.get(m.spec.name, False) for m in ranks}
            moments["start"] = "warm" if flags == {True} else "cold" if flags == {False} else "mixed"
        events = [self.workload_events.get(m.spec.name, {}) for m in ranks]
        configured = [max((e[k] for k in ("cluster", "checkpoint_loaded") if k in e), default=None)
                      for e in events]
        if ranks and all(c is not None for c in configured):
            moments["configured_at"] = max(configured)
        firsts = [e.get("first_step") for e in events]
        if ranks and all(f is not None for f in firsts):
            moments["first_step_at"] = max(firsts)
        else:
            # a workload that reports its phases also reports its first step (a little after its progress
            # line: the agent forwards metrics records once a second); others are timed by that line
            progress = self.sup._progress()
            seen = [progress.first_seen.get((self.attempt.number, m.rank)) for m in ranks] if progress else []
            if ranks and seen and all(t is not None for t in seen) and (
                    not any(events) or self.sup.clock() - max(seen) > FIRST_STEP_EVENT_WAIT_S):
                moments["first_step_at"] = max(seen)
        details = {}
        for key, label in (("main_s", "imports"), ("init_s", "cluster"), ("load_s", "checkpoint load")):
            values = [e[key] for e in events if key in e]
            if values:
                details[label] = max(values)
        waits: Dict[str, float] = {}
        for host, seconds in self.warm_s.values():  # a host's agent takes its interpreters one by one
            waits[host] = waits.get(host, 0.0) + seconds
        if waits and max(waits.values()) >= 0.005:
            details[WARM_WAIT] = max(waits.values())
        if details:
            moments["details"] = details
        return moments

    def _pids_and_ranks(self) -> Tuple[Dict[str, List[int]], Dict[str, List[int]]]:
        pids: Dict[str, List[int]] = {}
        ranks: Dict[str, List[int]] = {}
        for m in self.attempt.members.values():
            if m.carries_ranks and m.pid is not None:
                pids.setdefault(m.spec.host, []).append(m.pid)
                ranks.setdefault(m.spec.host, []).extend(m.spec.ranks)
        return pids, ranks

    def flush_records(self) -> None:
        """Write the processes started and ended since the last write, in one job.json update."""
        started, self.pending_records = self.pending_records, []
        ended, self.finished_records = self.finished_records, []
        if not started and not ended:
            return

        def change(record):
            for proc in started:
                record = record.with_process(proc)
            attempt = record.current_attempt
            for name, state, status in ended:
                current = attempt.process(name) if attempt else None
                if current is not None and not current.state.is_final:
                    record = record.with_process_state(name, state, status)
            return record
        self.sup.job.update(change)

    # -- teardown

    def teardown(self) -> None:
        """Every agent stops its processes at once; wait for all (grace x2 + 5 s at most)."""
        sup = self.sup
        self.attempt.close_decision()
        if self.health is not None:
            self.health.stop()
        first = sup.backend.stop_signal
        number = self.attempt.number
        for host, agent in self.agents.items():
            if host not in self.done_hosts:
                agent.stop(first)
        grace = sup.spec.timeouts.stop_grace_s
        deadline = time.monotonic() + (2 if first != 15 else 1) * grace + 5.0
        while time.monotonic() < deadline:
            if all(a.attempt_done(number).is_set() for a in self.agents.values()):
                break
            try:
                self.handle(self.events.get(timeout=0.05))
            except queue.Empty:
                pass
        self._drain()
        for host, agent in self.agents.items():
            if not agent.alive:
                self.lost_hosts.add(host)
            elif not agent.attempt_done(number).is_set():
                sup.say(f"teardown on {host}: the agent did not finish in time; hanging up")
                self.lost_hosts.add(host)
                agent.close()
                agent.wait(2.0)
        self._drain()
        self.sweep_lost()

    def sweep_lost(self) -> None:
        """On hosts whose agent was lost (killed, cut off) or did not finish, end what is left of the job:
        its children died with it, but processes they started may not have."""
        sup = self.sup
        job_id = self.plan.job_id
        lost = sorted(self.lost_hosts)
        swept = fan_out(sup.hosts.sweep, lost, key=str, width=sup.fanout, catch=(HostError,))
        for host in lost:
            if host in swept.failed:
                self.unsweepable[host] = swept.failed[host].cause
                sup.say(f"cannot make sure no process of job {job_id} is left on {host} "
                        f"({swept.failed[host].cause}): the host is treated as unreachable")
            else:
                sup.say(f"swept {swept.succeeded[host].describe()}")

    def record_ends(self) -> None:
        left = self.attempt.mark_stopped(self.sup.clock())
        for m in left:
            self.finished_records.append((m.spec.name, RankState.STOPPED, m.status))
        self.flush_records()


def capture_stacks(attempt: Attempt, agents: Mapping[str, HostAgent], job_dir,
                   fanout: int = DEFAULT_WIDTH):
    """Every running rank process's Python stack through its host's agent, all hosts at once; the analysis
    (launcher.stacks) and where it was saved, or (None, None) when no rank runs."""
    from launcher import stacks

    by_host: Dict[str, List[Tuple[int, int]]] = {}
    for m in attempt.members.values():
        if m.carries_ranks and m.pid is not None and not m.state.is_final and m.spec.host in agents:
            by_host.setdefault(m.spec.host, []).append((m.rank if m.rank is not None else -1, m.pid))
    if not by_host:
        return None, None

    def take(host: str):
        pids = [pid for _, pid in by_host[host]]
        return dict(zip((rank for rank, _ in by_host[host]), agents[host].stacks(pids)))

    taken = fan_out(take, list(by_host), key=str, width=fanout, catch=(HostError,))
    records = {(rank, host): record for host, found in taken.succeeded.items()
               for rank, record in found.items()}
    for host, exc in taken.failed.items():
        for rank, pid in by_host[host]:
            records[(rank, host)] = {"pid": pid, "status": "failed", "reason": exc.cause, "threads": []}
    report = stacks.analyse(records)
    folder = stacks.save(report, records, job_dir, attempt.number, time.time())
    return report, folder


def describe_saved(records: Sequence[Mapping[str, Any]]) -> str:
    """The checkpoint the ranks saved on request, from their `saved_on_request` events: `refinenet-2_4.ckpt
    after global step 14 (epoch 2 step 4)`; `a checkpoint` when no rank said which."""
    steps = sorted({r.get("step") for r in records if isinstance(r.get("step"), int)})
    names = sorted({posixpath.basename(str(r["checkpoint"])) for r in records if r.get("checkpoint")})
    what = ", ".join(names) if names else "a checkpoint"
    if len(steps) == 1:
        first = next(r for r in records if r.get("step") == steps[0])
        where = f" (epoch {first['epoch']} step {first['epoch_step']})" if "epoch_step" in first else ""
        return f"{what} after global step {steps[0]}{where}"
    if steps:
        return f"{what} after global steps {', '.join(map(str, steps))} (the ranks disagree)"
    return what


class _Skipped(Exception):
    """A host's agent was not started because a stop was requested meanwhile."""


__all__ = ["Supervisor", "AttemptResult", "HealthWatch", "PlanFactory", "describe_saved"]
