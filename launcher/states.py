"""Explicit states of a job and of its processes, with guarded transitions. No dependencies.

Job lifecycle::

    PENDING ──► STARTING ──► RUNNING ──► SUCCEEDED
       │           │            │  └──► STARTING (next stage of a multi-stage job)
       │           ├────────────┴──► RESTARTING ──► STARTING (next attempt)
       │           │                     │
       └───────────┴─────────────────────┴──► FAILED | STOPPED

A job is PENDING until its first process starts, STARTING while the processes of an attempt
come up, RUNNING once all of them run. When a rank fails and the restart policy allows another
attempt the job is RESTARTING until the next attempt starts. SUCCEEDED, FAILED and STOPPED
(ended by `refinenet-launch stop` or a signal) are final: nothing leaves them, but
`refinenet-launch resume JOB`, which takes a FAILED or STOPPED job back to RESTARTING
(`check_resume_transition`).

Each process of an attempt (a rank, or an auxiliary process such as the scheduler) has a
`RankState`: PENDING ──► STARTING ──► RUNNING ──► {SUCCEEDED, FAILED, STOPPED}; a process that
never came up goes straight from PENDING or STARTING to FAILED or STOPPED.
"""
from __future__ import annotations

from enum import Enum
from typing import FrozenSet, Mapping, TypeVar, Union


class JobState(str, Enum):
    """State of a whole job (see the module docstring for the lifecycle)."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


class RankState(str, Enum):
    """State of one process of an attempt: a rank or an auxiliary process (scheduler, msrun)."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in RANK_FINAL_STATES


#: Job states in which processes may exist and the launcher is (or should be) watching them.
ACTIVE_STATES: FrozenSet[JobState] = frozenset(
    {JobState.PENDING, JobState.STARTING, JobState.RUNNING, JobState.RESTARTING})
#: Job states nothing leaves.
FINAL_STATES: FrozenSet[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED})

RANK_ACTIVE_STATES: FrozenSet[RankState] = frozenset(
    {RankState.PENDING, RankState.STARTING, RankState.RUNNING})
RANK_FINAL_STATES: FrozenSet[RankState] = frozenset(
    {RankState.SUCCEEDED, RankState.FAILED, RankState.STOPPED})

JOB_TRANSITIONS: Mapping[JobState, FrozenSet[JobState]] = {
    JobState.PENDING: frozenset({JobState.STARTING, JobState.FAILED, JobState.STOPPED}),
    JobState.STARTING: frozenset(
        {JobState.RUNNING, JobState.RESTARTING, JobState.FAILED, JobState.STOPPED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.STARTING, JobState.RESTARTING, JobState.FAILED, JobState.STOPPED}),
    JobState.RESTARTING: frozenset({JobState.STARTING, JobState.FAILED, JobState.STOPPED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.STOPPED: frozenset(),
}

RANK_TRANSITIONS: Mapping[RankState, FrozenSet[RankState]] = {
    RankState.PENDING: frozenset({RankState.STARTING, RankState.FAILED, RankState.STOPPED}),
    RankState.STARTING: frozenset({RankState.RUNNING, RankState.FAILED, RankState.STOPPED}),
    RankState.RUNNING: frozenset({RankState.SUCCEEDED, RankState.FAILED, RankState.STOPPED}),
    RankState.SUCCEEDED: frozenset(),
    RankState.FAILED: frozenset(),
    RankState.STOPPED: frozenset(),
}


#: What `refinenet-launch resume` may do to a job that ended: continue it with a new attempt.
RESUME_TRANSITIONS: Mapping[JobState, FrozenSet[JobState]] = {
    JobState.FAILED: frozenset({JobState.RESTARTING}),
    JobState.STOPPED: frozenset({JobState.RESTARTING}),
}


class InvalidTransition(ValueError):
    """A state change the lifecycle does not allow; says what was attempted and what is allowed."""

    def __init__(self, what: str, current: Enum, target: Enum, allowed: FrozenSet[Enum]):
        names = ", ".join(sorted(s.value for s in allowed)) or "nothing (final state)"
        super().__init__(f"{what}: cannot go from {current.value} to {target.value}; "
                         f"from {current.value} it may go to {names}")
        self.what, self.current, self.target = what, current, target


S = TypeVar("S", JobState, RankState)


def _check(table: Mapping[S, FrozenSet[S]], enum: type, current: Union[S, str], target: Union[S, str],
           what: str) -> S:
    cur, new = enum(current), enum(target)
    if new not in table[cur]:
        raise InvalidTransition(what, cur, new, table[cur])
    return new


def check_job_transition(current: Union[JobState, str], target: Union[JobState, str],
                         what: str = "job") -> JobState:
    """`target` as a JobState if the job may go there from `current`; raises `InvalidTransition`."""
    return _check(JOB_TRANSITIONS, JobState, current, target, what)


def check_resume_transition(current: Union[JobState, str], what: str = "job") -> JobState:
    """RESTARTING if a job in `current` may be resumed (FAILED or STOPPED); raises `InvalidTransition`."""
    cur = JobState(current)
    allowed = RESUME_TRANSITIONS.get(cur, frozenset())
    if JobState.RESTARTING not in allowed:
        raise InvalidTransition(what, cur, JobState.RESTARTING, allowed)
    return JobState.RESTARTING


def check_rank_transition(current: Union[RankState, str], target: Union[RankState, str],
                          what: str = "process") -> RankState:
    """`target` as a RankState if a process may go there from `current`; raises `InvalidTransition`."""
    return _check(RANK_TRANSITIONS, RankState, current, target, what)
