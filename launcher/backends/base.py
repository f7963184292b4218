"""The backend interface: each backend renders its processes, routes their output, and says how to
stop and watch them. The supervisor and the host agents do the rest the same way for every backend.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from launcher.logs.aggregator import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec

if TYPE_CHECKING:
    pass

Sink = Callable[[str], None]
#: Roles whose processes carry ranks: an attempt succeeds when all of them exit 0.
RANK_ROLES = ("rank", "msrun", "mpirun")


@dataclass(frozen=True)
class Tail:
    """A file on a process's host whose lines are a rank's output (e.g. an msrun worker log)."""

    rank: int
    path: str


class Backend:
    """Default behaviour: one process per rank, its output is that rank's log, SIGTERM stops it."""

    name = "base"
    #: First signal sent to a process of this backend at teardown (then SIGTERM/SIGKILL to the group).
    stop_signal: int = signal.SIGTERM

    def render(self, r) -> None:
        """Add this backend's processes and files for a training stage to the plan being rendered."""
        raise NotImplementedError

    def sink(self, proc: ProcessSpec, plan: LaunchPlan, logs: LogAggregator) -> Sink:
        """Where `proc`'s output lines go."""
        if proc.role == "rank":
            return logs.rank_sink(proc.ranks[0], proc.host)
        return logs.process_sink(proc.name, proc.host)

    def tails(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Tail]:
        """Files on `proc`'s host whose lines are rank output while it runs (none by default)."""
        return ()

    @staticmethod
    def carries_ranks(proc: ProcessSpec) -> bool:
        return proc.role in RANK_ROLES
