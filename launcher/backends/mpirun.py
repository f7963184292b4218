"""`mpirun`: one mpirun on the head host; its `--tag-output` lines are split back into ranks."""
from __future__ import annotations

import re

from launcher.backends.base import Backend, Sink
from launcher.logs import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec

_TAG = re.compile(r"^\[\d+,(\d+)\]<std(?:out|err|diag)>:(.*)$", re.S)


class MpirunBackend(Backend):
    name = "mpirun"

    def sink(self, proc: ProcessSpec, plan: LaunchPlan, logs: LogAggregator) -> Sink:
        if proc.role != "mpirun":
            return super().sink(proc, plan, logs)
        own = logs.process_sink(proc.name, proc.host)
        hosts = {s.rank: s.host for s in plan.slots}
        sinks = {}

        def route(line: str) -> None:
            match = _TAG.match(line)
            if not match:
                own(line)
                return
            rank = int(match.group(1))
            sink = sinks.get(rank)
            if sink is None:
                sink = sinks[rank] = logs.rank_sink(rank, hosts.get(rank, proc.host))
            sink(match.group(2))

        return route
