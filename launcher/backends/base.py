"""The backend interface: each backend renders its processes, routes their output, and says how to
stop and watch them. The supervisor and the host agents do the rest the same way for every backend;
nothing outside `launcher/backends/` decides anything by a backend's name.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable, List, Sequence

from launcher.logs.aggregator import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec
from launcher.render.renderer import Renderer

Sink = Callable[[str], None]
#: Roles whose processes carry ranks: an attempt succeeds when all of them exit 0.
RANK_ROLES = ("rank", "msrun", "mpirun")
#: How an auxiliary process is named in failure reports.
ROLE_LABELS = {"scheduler": "the scheduler", "msrun": "msrun", "mpirun": "mpirun"}


@dataclass(frozen=True)
class Tail:
    """A file on a process's host whose lines are a rank's output (e.g. an msrun worker log)."""

    rank: int
    path: str


class Backend:
    """Default behaviour: one process per rank, its output is that rank's log, SIGTERM stops it."""

    name = "base"
    #: Each rank is a process of its own that execs the workload's program: a warm interpreter kept by the
    #: host's agent can be it at a restart.
    warm_starts = False
    #: First signal sent to a process of this backend at teardown (then SIGTERM/SIGKILL to the group).
    stop_signal: int = signal.SIGTERM

    def render(self, r: Renderer) -> None:
        """Add this backend's processes and files for a multi-rank stage to the plan being rendered."""
        raise NotImplementedError

    def host_order(self, r: Renderer) -> List[str]:
        """The hosts of the rendered plan in the order their files and scripts are listed (rank order)."""
        return list(r.by_host)

    def sink(self, proc: ProcessSpec, plan: LaunchPlan, logs: LogAggregator) -> Sink:
        """Where `proc`'s output lines go."""
        if proc.role == "rank":
            return logs.rank_sink(proc.ranks[0], proc.host)
        return logs.process_sink(proc.name, proc.host)

    def tails(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Tail]:
        """Files on `proc`'s host whose lines are rank output while it runs (none by default)."""
        return ()

    def watches(self, proc: ProcessSpec) -> bool:
        """Whether the host agent's hang check watches `proc`'s output (a rank's own process)."""
        return self.carries_ranks(proc) and proc.role == "rank"

    @staticmethod
    def carries_ranks(proc: ProcessSpec) -> bool:
        return proc.role in RANK_ROLES

    @staticmethod
    def who(proc: ProcessSpec) -> str:
        """How failure reports name `proc`: "" for a rank, else its label (`the scheduler`)."""
        if proc.role == "rank":
            return ""
        label = ROLE_LABELS.get(proc.role, proc.name)
        return label if proc.name == proc.role else f"{label} ({proc.name})"


class MasterFirst(Backend):
    """A backend whose master host (the scheduler's) is part of the plan even without ranks of its own."""

    def host_order(self, r: Renderer) -> List[str]:
        order = list(r.by_host)
        if r.spec.master.host not in order:
            order.insert(0, r.spec.master.host)
        return order
