"""`mpirun`: one mpirun on the head host; its `--tag-output` lines are split back into ranks."""
from __future__ import annotations

import os
import posixpath
import re
from typing import Callable, Dict, List

from launcher.backends.base import Backend, Sink
from launcher.logs.aggregator import LogAggregator
from launcher.plan import LaunchPlan, ProcessSpec
from launcher.render.artifacts import HOSTFILE, render_hostfile
from launcher.render.quoting import template

_TAG = re.compile(r"\[\d+,(\d+)\]<std(?:out|err|diag)>:")


class TaggedOutput:
    """Demultiplexes mpirun's `--tag-output` stream into whole lines per rank.

    Open MPI tags every chunk it reads from a rank, not every line: an unbuffered `print("a")`
    arrives as `[1,0]<stdout>:a[1,0]<stdout>:` and a newline, and chunks of several ranks can share
    one physical line. A tagged piece followed by another tag on the same line is an unfinished part
    of its rank's line; the last piece of a physical line ends its rank's line. Text before the first
    tag is mpirun's own.
    """

    def __init__(self, rank_line: Callable[[int, str], None], own_line: Sink):
        self.rank_line, self.own_line = rank_line, own_line
        self.pending: Dict[int, List[str]] = {}

    def feed(self, line: str) -> None:
        tags = list(_TAG.finditer(line))
        if not tags:
            self.own_line(line)
            return
        if tags[0].start() > 0:
            self.own_line(line[:tags[0].start()])
        for tag, following in zip(tags, tags[1:]):
            self.pending.setdefault(int(tag.group(1)), []).append(line[tag.end():following.start()])
        last = tags[-1]
        rank = int(last.group(1))
        self.rank_line(rank, "".join(self.pending.pop(rank, ())) + line[last.end():])


class MpirunBackend(Backend):
    name = "mpirun"

    def render(self, r) -> None:
        head = r.master
        r.scheduler()
        hostfile = r.copy_to_hosts(HOSTFILE, render_hostfile(r.spec, r.slots), [head])[head.name]
        env = {**r.base_env(head), "MS_SCHED_HOST": r.spec.master.addr, "MS_SCHED_PORT": str(r.port),
               **r.visible_devices_env(head)}
        as_root = os.geteuid() == 0 if head.ssh is None else head.ssh.user == "root"
        command = template("mpirun.sh.j2").render(
            world_size=r.world, hostfile=hostfile,
            output_dir=posixpath.join(r.attempt_dir(head), "mpirun_output"), workdir=head.workdir,
            as_root=as_root, forward=list(env), argv=r.workload_argv(head))
        proc = r.add("mpirun", head, "mpirun", [s.rank for s in r.slots], command, env, "mpirun.log")
        for slot in r.slots:
            r.rank_env_file(slot, proc.env, notes=[
                f"started by mpirun on {head.name} (forwarded with -x); the rank sees "
                f"OMPI_COMM_WORLD_RANK={slot.rank} OMPI_COMM_WORLD_LOCAL_RANK={slot.local_rank} "
                f"OMPI_COMM_WORLD_SIZE={r.world}, which the workload maps to MS_ROLE=MS_WORKER "
                f"MS_NODE_ID={slot.rank} MS_WORKER_NUM={r.world}"])


    def host_order(self, r) -> List[str]:
        """The head host (mpirun's, with the scheduler) first, then the ranks' hosts."""
        return list(dict.fromkeys([r.spec.master.host, *r.by_host]))

    def watches(self, proc: ProcessSpec) -> bool:
        return super().watches(proc) or proc.role == "mpirun"

    def sink(self, proc: ProcessSpec, plan: LaunchPlan, logs: LogAggregator) -> Sink:
        if proc.role != "mpirun":
            return super().sink(proc, plan, logs)
        hosts = {s.rank: s.host for s in plan.slots}
        sinks: Dict[int, Sink] = {}

        def rank_line(rank: int, text: str) -> None:
            sink = sinks.get(rank)
            if sink is None:
                sink = sinks[rank] = logs.rank_sink(rank, hosts.get(rank, proc.host))
            sink(text)

        return TaggedOutput(rank_line, logs.process_sink(proc.name, proc.host)).feed
