"""The backend interface: output routing, companion processes, stop signals."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

from launcher.logs import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec

Sink = Callable[[str], None]


@dataclass(frozen=True)
class Companion:
    """A helper command started beside a process (e.g. a tail of a worker log), fed to a rank's log."""

    name: str
    host: str
    rank: int
    argv: Tuple[str, ...]


class Backend:
    """Default behaviour: one process per rank, its output is that rank's log, SIGTERM stops it."""

    name = "base"
    #: First signal sent to a process of this backend at teardown (then SIGTERM/SIGKILL to the group).
    stop_signal: int = signal.SIGTERM

    def sink(self, proc: ProcessSpec, plan: LaunchPlan, logs: LogAggregator) -> Sink:
        """Where `proc`'s output lines go."""
        if proc.role == "rank":
            return logs.rank_sink(proc.ranks[0], proc.host)
        return logs.process_sink(proc.name, proc.host)

    def companions(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Companion]:
        """Extra commands to run on `proc`'s host while it runs (none by default)."""
        return ()
