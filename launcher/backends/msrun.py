"""`msrun`: one msrun per host; each worker's log file is tailed into that rank's log.

msrun writes each worker's output to `<log_dir>/worker_<rank>.log` only (the rendered command turns
off its echo of them), so the host agent follows each of those files into its rank's log. Its
workers run in sessions of their own: SIGTERM ends msrun, and the agent then ends the workers it
left behind (it ends every descendant, whatever its group), with the same grace as any rank.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from typing import Dict, Sequence

from launcher.backends.base import MasterFirst, Tail
from launcher.backends.traits import uses_rank_table
from launcher.errors import ClusterFileError
from launcher.plan import LaunchPlan, ProcessSpec
from launcher.render.artifacts import MSRUN_ENTRY, RANK_TABLE, render_rank_table
from launcher.render.quoting import template

_LOG_DIR = re.compile(r"--log_dir=(\S+)")
def msrun_log_dir(proc: ProcessSpec) -> str:
    """The `--log_dir` of a rendered msrun command."""
    match = _LOG_DIR.search(proc.command)
    if not match:
        raise ValueError(f"{proc.name}: the msrun command has no --log_dir")
    return shlex.split(match.group(1))[0]


class MsrunBackend(MasterFirst):
    name = "msrun"

    def render(self, r) -> None:
        """The scheduler, then one msrun per host.

        msrun numbers a host's workers `node_rank * local_worker_num + i`, hence equal hosts. Its
        task is `msrun_entry.py`, which ends msrun's own copy of the scheduler at once (see there).
        """
        sizes = {name: len(host_slots) for name, host_slots in r.by_host.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{n}: {k}" for n, k in sizes.items())
            raise ClusterFileError(r.spec.source, "hosts",
                                   f"backend msrun needs the same number of ranks on every host ({listed})")
        table_paths: Dict[str, str] = {}
        if uses_rank_table(r.spec.backend, r.spec.device):
            table = render_rank_table(r.spec, r.slots)
            table_paths = r.copy_to_hosts(RANK_TABLE, table, [r.hosts[h] for h in r.by_host])
        r.scheduler()
        entries = r.copy_to_hosts(MSRUN_ENTRY, template(f"{MSRUN_ENTRY}.j2").render() + "\n",
                                     [r.hosts[h] for h in r.by_host])
        for name, host_slots in r.by_host.items():
            host = r.hosts[name]
            argv = r.workload_argv(host)
            python_dir = posixpath.dirname(host.python) if "/" in host.python else ""
            python = "python3" if posixpath.basename(host.python).startswith("python3") else "python"
            command = template("msrun.sh.j2").render(
                path_dir=python_dir, python=host.python, worker_num=r.world,
                local_worker_num=len(host_slots), master_addr=r.spec.master.addr, master_port=r.port,
                node_rank=host_slots[0].node_rank,
                log_dir=posixpath.join(r.attempt_dir(host), "msrun_log"),
                cluster_time_out=r.spec.timeouts.cluster_s, rank_table_file=table_paths.get(name, ""),
                no_tail_rank=r.world, entry=entries[name], task=python, argv=argv)
            env = {**r.base_env(host), **r.visible_devices_env(host)}
            proc = r.add(f"msrun-{name}", host, "msrun", [s.rank for s in host_slots], command, env,
                            f"msrun_{name}.log")
            for slot in host_slots:
                r.rank_env_file(slot, proc.env, notes=[
                    f"started by msrun on {name}, which adds MS_ROLE=MS_WORKER MS_NODE_ID={slot.rank} "
                    f"RANK_ID={slot.rank} DEVICE_ID={slot.local_rank} RANK_SIZE={r.world} "
                    f"MS_WORKER_NUM={r.world} MS_SCHED_HOST={r.spec.master.addr} "
                    f"MS_SCHED_PORT={r.port}"])


    def tails(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Tail]:
        if proc.role != "msrun":
            return ()
        log_dir = msrun_log_dir(proc)
        return tuple(Tail(rank, posixpath.join(log_dir, f"worker_{rank}.log")) for rank in proc.ranks)
