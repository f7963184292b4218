"""`backend: slurm`: the Slurm allocation the launcher runs in, and the cluster spec bound to its nodes.

Inside an allocation (`salloc`, or the batch script `refinenet-launch submit` sends) Slurm names the
job and its nodes in `SLURM_JOB_ID` and `SLURM_JOB_NODELIST`; `scontrol show node` gives each node's
address, which must be an IP address (MindSpore's scheduler address is one). Every command on a node
then runs as a step of that allocation: `srun --jobid J --overlap -N1 -n1 -w NODE ...`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from launcher.errors import BadInput
from launcher.slurm.spec import slurm_host
from launcher.slurm.text import expand_nodelist, parse_job_state, parse_node_addrs, time_limit_hit
from launcher.spec.model import ClusterSpec, MasterSpec, host_order

__all__ = ["Allocation", "current_allocation", "bind", "node_srun", "SRUN_TIMEOUT_S", "slurm_run", "show_job",
           "time_is_up", "ending", "time_limit_reason"]

SRUN_TIMEOUT_S = 30.0
#: What every command on a node runs under: a one-task step on that node sharing the allocation's resources
#: with the other steps (agents, checks); srun's own chatter off.
_STEP = ("--overlap", "--nodes=1", "--ntasks=1", "--quiet", "--kill-on-bad-exit=1")

Run = Callable[[Sequence[str]], subprocess.CompletedProcess]


def slurm_run(argv: Sequence[str], timeout: float = SRUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a Slurm client command; `BadInput` when Slurm's clients are not installed here."""
    if shutil.which(argv[0]) is None:
        raise BadInput(f"backend slurm: {argv[0]} is not installed on this machine (Slurm's client commands "
                       f"are needed where the launcher runs)")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def show_job(job_id: str, run: Run = slurm_run) -> Optional[Dict[str, str]]:
    """`scontrol show job -o JOB` as fields (see `launcher.slurm.text.parse_job_state`); None when Slurm does
    not know the job (any more)."""
    shown = run(["scontrol", "show", "job", "-o", str(job_id)])
    if shown.returncode != 0:
        return None
    try:
        return parse_job_state(shown.stdout)
    except ValueError:
        return None


@dataclass(frozen=True)
class Allocation:
    """A running Slurm job's nodes (in Slurm's order) and their IP addresses."""

    job_id: str
    nodes: Tuple[str, ...]
    addrs: Mapping[str, str]
    time_limit: str = ""
    end_time: str = ""


def current_allocation(environ: Mapping[str, str] = os.environ, run: Run = slurm_run) -> Optional[Allocation]:
    """The allocation this process runs in, or None outside one. `BadInput` when Slurm cannot say which
    nodes it has or a node has no IP address."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    try:
        nodes = tuple(expand_nodelist(nodelist))
    except ValueError as exc:
        raise BadInput(f"Slurm allocation {job_id}: SLURM_JOB_NODELIST: {exc}") from None
    if not nodes:
        raise BadInput(f"Slurm allocation {job_id}: SLURM_JOB_NODELIST is empty")
    shown = run(["scontrol", "show", "node", "-o", ",".join(nodes)])
    if shown.returncode != 0:
        raise BadInput(f"Slurm allocation {job_id}: `scontrol show node` failed: {shown.stderr.strip()}")
    addrs = parse_node_addrs(shown.stdout)
    resolved: Dict[str, str] = {}
    for node in nodes:
        resolved[node] = _ip_of(node, addrs.get(node, node), job_id)
    fields = show_job(job_id, run) or {}
    return Allocation(job_id, nodes, resolved, fields.get("TimeLimit", ""), fields.get("EndTime", ""))


def _ip_of(node: str, addr: str, job_id: str) -> str:
    try:
        ipaddress.ip_address(addr)
        return addr
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(addr, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadInput(f"Slurm allocation {job_id}: node {node}'s address {addr!r} does not resolve to an IP "
                       f"address ({exc.strerror}); MindSpore's scheduler needs one (set NodeAddr)") from None
    return str(infos[0][4][0])


def time_is_up(end_time: str, now: Optional[float] = None, slack_s: float = 5.0) -> bool:
    """Whether Slurm's `EndTime` (`2026-11-30T03:15:00`, local time) is past, give or take `slack_s`."""
    try:
        end = time.mktime(time.strptime(end_time, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return False
    return (time.time() if now is None else now) >= end - slack_s


def time_limit_reason(allocation: Allocation) -> str:
    return (f"the Slurm allocation's time limit ({allocation.time_limit}) ended the job "
            f"(Slurm job {allocation.job_id}, end time {allocation.end_time})")


def ending(allocation: Allocation, run: Run = slurm_run) -> str:
    """Why the allocation is ending (its time limit, cancelled, ...), or "" while it runs on."""
    if time_is_up(allocation.end_time):
        return time_limit_reason(allocation)
    try:
        state = show_job(allocation.job_id, run)
    except (OSError, subprocess.SubprocessError):
        return ""
    if state is None:
        return ""
    if time_limit_hit(state):
        return time_limit_reason(allocation)
    if state.get("JobState") not in ("RUNNING", "CONFIGURING", "SUSPENDED", ""):
        return (f"Slurm job {allocation.job_id} is ending ({state.get('JobState')}, reason "
                f"{state.get('Reason')})")
    return ""


def node_srun(job_id: str, node: str, extra: Sequence[str] = ()) -> Tuple[str, ...]:
    """The srun options that run one command on `node` inside allocation `job_id`."""
    return ("srun", f"--jobid={job_id}", *_STEP, f"--nodelist={node}", *extra)


def bind(spec: ClusterSpec, allocation: Allocation) -> ClusterSpec:
    """`spec` with the allocation's first `slurm.nodes` nodes as its hosts and the first of them (in rank
    order) as the master. `BadInput` naming both numbers when the allocation is too small."""
    slurm = spec.slurm
    assert slurm is not None, "bind is for backend slurm"
    have = len(allocation.nodes)
    if have < slurm.nodes:
        raise BadInput(f"{spec.source}: slurm.nodes is {slurm.nodes} but Slurm allocation "
                       f"{allocation.job_id} has {have} node(s) ({', '.join(allocation.nodes)}): allocate "
                       f"{slurm.nodes} (salloc -N {slurm.nodes}) or lower slurm.nodes; nothing was started")
    hosts = tuple(slurm_host(slurm, node, allocation.addrs[node],
                             node_srun(allocation.job_id, node, slurm.srun_options))
                  for node in allocation.nodes[:slurm.nodes])
    first = host_order(hosts)[0]
    master = MasterSpec(addr=first.address, port=spec.master.port, host=first.name)
    return dataclasses.replace(spec, hosts=hosts, master=master)


def agent_step_line(host, spec) -> str:
    """The srun line that starts `host`'s agent, for `--dry-run` (the agent's source goes on its stdin)."""
    import shlex

    from launcher.slurm.transport import AGENT_STEP

    srun = host.srun or node_srun("$SLURM_JOB_ID", host.name, spec.slurm.srun_options if spec.slurm else ())
    return shlex.join([*srun, *AGENT_STEP, host.python]) + " -S -c <host agent>"
