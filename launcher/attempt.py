"""One attempt of a job as plain state: its process set, what happened to each, and how it ended.

The supervisor feeds it what the host agents report (started, exit, hang, a host lost) and what the
health watch finds, each with its time; the attempt decides. No I/O, no threads, no clock of its
own: tests script event sequences and check the outcome and the root cause.

Root cause: the failures seen before teardown begins (the first one, and those that had already
arrived with it) are candidates; the most telling wins: a rank killed by a signal, then a rank that
failed otherwise (exit code, hang, its host lost), then an auxiliary process (a scheduler usually
fails *because* a rank died); earlier first among equals.
"""
from __future__ import annotations

import signal as signals
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

from launcher.failures import Failure, FailureKind
from launcher.plan import LaunchPlan, ProcessSpec
from launcher.states import JobState, RankState, check_rank_transition


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by signal {-status} ({signal_name(-status)})"
    return f"exit code {status}"


def signal_name(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass
class Member:
    """A process of the attempt and what is known of it; `who` names an auxiliary process ("" for a
    rank). Its state changes only through `move`, which enforces the process lifecycle."""

    spec: ProcessSpec
    carries_ranks: bool
    who: str = ""
    state: RankState = RankState.PENDING
    pid: Optional[int] = None
    pgid: Optional[int] = None
    status: Optional[int] = None
    started: Optional[float] = None
    ended: Optional[float] = None

    @property
    def rank(self) -> Optional[int]:
        return self.spec.ranks[0] if self.spec.ranks and self.carries_ranks else None

    def move(self, state: RankState) -> None:
        self.state = check_rank_transition(self.state, state, what=f"{self.spec.name} on {self.spec.host}")


def _bring_up(m: Member) -> None:
    """PENDING or STARTING -> RUNNING, through the lifecycle."""
    if m.state == RankState.PENDING:
        m.move(RankState.STARTING)
    if m.state == RankState.STARTING:
        m.move(RankState.RUNNING)


class ProcessRoles(Protocol):
    """What the attempt asks the backend about its processes (launcher.backends.base.Backend)."""

    def carries_ranks(self, proc: ProcessSpec) -> bool: ...

    def who(self, proc: ProcessSpec) -> str: ...


class Attempt:
    """State of attempt `number` of `plan`; `roles` (the backend) says which processes hold ranks and
    how an auxiliary process is named."""

    def __init__(self, number: int, plan: LaunchPlan, roles: ProcessRoles):
        self.number = number
        self.plan = plan
        self.members: Dict[str, Member] = {p.name: Member(p, roles.carries_ranks(p), roles.who(p))
                                           for p in plan.processes}
        self._by_host: Dict[str, List[Member]] = {}
        for m in self.members.values():
            self._by_host.setdefault(m.spec.host, []).append(m)
        self.outcome: Optional[JobState] = None
        self.candidates: List[Tuple[Tuple[int, float], Failure]] = []
        self._deciding = True

    # -- queries

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def root_cause(self) -> Optional[Failure]:
        return min(self.candidates, key=lambda c: c[0])[1] if self.candidates else None

    def all_started(self) -> bool:
        return all(m.state != RankState.PENDING for m in self.members.values())

    def on_host(self, host: str) -> List[Member]:
        return list(self._by_host.get(host, ()))

    # -- events

    def starting(self, host: str) -> None:
        """The host's agent was asked to start its processes."""
        for m in self.on_host(host):
            if m.state == RankState.PENDING:
                m.move(RankState.STARTING)

    def started(self, name: str, pid: int, pgid: int, at: float) -> Member:
        m = self.members[name]
        m.pid, m.pgid, m.started = pid, pgid, at
        _bring_up(m)
        return m

    def exited(self, name: str, status: int, at: float) -> Member:
        """Process `name` ended with `status` (exit code, or minus a signal number)."""
        m = self.members[name]
        if m.state.is_final:
            return m
        m.status, m.ended = status, at
        if status == 0:
            _bring_up(m)
            m.move(RankState.SUCCEEDED)
        elif self._deciding:
            m.move(RankState.FAILED)
            code, sig = (status, None) if status >= 0 else (None, -status)
            self._fail(Failure(FailureKind.EXIT, m.spec.host, describe_status(status), rank=m.rank, who=m.who,
                               exit_code=code, signal=sig, time=at),
                       0 if (m.carries_ranks and status < 0) else 1 if m.carries_ranks else 2)
        else:
            m.move(RankState.STOPPED)
        if self.outcome is None and all(x.state == RankState.SUCCEEDED
                                        for x in self.members.values() if x.carries_ranks):
            self.outcome = JobState.SUCCEEDED
        return m

    def hung(self, name: str, silent_s: float, hang_s: float, at: float, rank: Optional[int] = None) -> None:
        m = self.members[name]
        if m.state.is_final or not self._deciding:
            return
        rank = m.rank if rank is None else rank
        reason = (f"no progress for {silent_s:.0f} s: no log line or metrics record "
                  f"(hang timeout {hang_s:g} s)")
        who = m.who if rank is None else ""
        self._fail(Failure(FailureKind.HANG, m.spec.host, reason, rank=rank, who=who, time=at), 1)

    def host_lost(self, host: str, detail: str, at: float, kind: FailureKind = FailureKind.LOST) -> None:
        """The host's agent or its connection went away while processes ran there (LOST), or the agent
        could not be started there at all (UNREACHABLE)."""
        if not self._deciding:
            return
        alive = [m for m in self.on_host(host) if not m.state.is_final]
        for m in alive:
            m.move(RankState.FAILED)
            m.ended = at
        ranked = [m for m in alive if m.carries_ranks]
        rank = ranked[0].rank if ranked else None
        reason = f"lost the connection to {host}: {detail}" if kind == FailureKind.LOST else detail
        self._fail(Failure(kind, host, reason, rank=rank, signal=signals.SIGHUP, time=at), 1)

    def failed(self, failure: Failure) -> None:
        """A failure found elsewhere (an unhealthy device, a host that stopped answering)."""
        if self._deciding:
            self._fail(failure, 1)

    def stop(self) -> None:
        """A stop was requested: the attempt ends STOPPED (unless it already ended)."""
        if self.outcome is None:
            self.outcome = JobState.STOPPED
        self._deciding = False

    def close_decision(self) -> None:
        """Teardown begins: later exits are the teardown's doing, not failures."""
        self._deciding = False

    def _fail(self, failure: Failure, severity: int) -> None:
        self.candidates.append(((severity, failure.time or 0.0), failure))
        if self.outcome is None:
            self.outcome = JobState.FAILED

    # -- at the end

    def mark_stopped(self, at: float) -> List[Member]:
        """Every process not known to have ended is recorded STOPPED; returns them."""
        left = [m for m in self.members.values() if not m.state.is_final and m.state != RankState.PENDING]
        for m in left:
            m.move(RankState.STOPPED)
            m.ended = at
        return left
