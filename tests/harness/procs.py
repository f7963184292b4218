"""A job's processes seen from outside, in /proc: found by their REFINENET_JOB_ID tag, waited for, killed.

The simulated hosts (loopback sshd, Slurm nodes in namespaces) share this kernel, so one look at /proc
sees a job's processes on every host. A process is named by its identity (pid, start time), so a pid
reused later is not taken for the one that ended.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

Identity = Tuple[int, int]


def _stat(pid: int) -> Optional[List[bytes]]:
    """The fields of /proc/PID/stat after the command name (state first), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != b"Z"


def identity(pid: int) -> Optional[Identity]:
    """(pid, start time in clock ticks) of a live, non-zombie process."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == b"Z" else (pid, int(fields[19]))


def still_alive(procs: Iterable[Identity]) -> List[int]:
    """The pids among `procs` whose very process still lives."""
    return [pid for pid, start in procs if identity(pid) == (pid, start)]


def cmdline(pid: int) -> str:
    """The command line of a process, its arguments joined by spaces; empty when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_members(pgid: int) -> List[int]:
    """Live processes of process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None and fields[0] != b"Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _environ(pid: int) -> Optional[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def tagged(job_id: str) -> List[int]:
    """Live processes carrying the job's tag (REFINENET_JOB_ID=job_id)."""
    tag = f"REFINENET_JOB_ID={job_id}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        env = _environ(int(entry))
        if env is not None and (env.startswith(tag) or b"\0" + tag in env) and alive(int(entry)):
            found.append(int(entry))
    return found


def ssh_server(pid: int) -> Optional[str]:
    """The address of the SSH server whose login started the process (its inherited SSH_CONNECTION: a
    simulated host's agent and everything it starts have one), None for a process of no SSH login."""
    for item in (_environ(pid) or b"").split(b"\0"):
        if item.startswith(b"SSH_CONNECTION="):
            fields = item.split(b"=", 1)[1].split()
            return fields[2].decode() if len(fields) == 4 else None
    return None


def tagged_on(job_id: str, address: str) -> List[int]:
    """The job's live processes on the simulated SSH host at `address`."""
    return [pid for pid in tagged(job_id) if ssh_server(pid) == address]


def snapshot(job_id: str) -> Set[Identity]:
    """Identities of the job's live processes."""
    return {i for i in map(identity, tagged(job_id)) if i}


def rank_pids(job_id: str) -> Dict[int, int]:
    """{rank: pid} of the job's live stand-in ranks, found by their tag, MS_NODE_ID and command line."""
    found = {}
    for pid in tagged(job_id):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in (_environ(pid) or b"").split(b"\0") if b"=" in item)
        is_rank = any(a.endswith(b"standin_workload.py") for a in argv) and b"rank" in argv
        if is_rank and env.get(b"MS_NODE_ID", b"").isdigit():
            found[int(env[b"MS_NODE_ID"])] = pid
    return found


def gone_within(job_id: str, seconds: float) -> List[int]:
    """Wait up to `seconds` until no process carries the job's tag; those that still do."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = tagged(job_id)
        if not left:
            return []
        time.sleep(0.05)
    return tagged(job_id)


def gone_after(procs: Iterable[Identity], since: float, timeout: float) -> Tuple[Optional[float], List[int]]:
    """Wait until none of `procs` lives: (seconds from `since` (monotonic) until then, or None on timeout;
    the pids still alive)."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = still_alive(procs)
        if not left:
            return time.monotonic() - since, []
        if time.monotonic() > deadline:
            return None, left
        time.sleep(0.02)


def wait_all(procs: Sequence[subprocess.Popen], timeout: float) -> List[int]:
    """The exit codes of `procs`, each waited for up to `timeout` s; whichever still runs then is killed."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def kill_tagged(job_id: str) -> int:
    """SIGKILL every live process carrying the job's tag; how many there were."""
    pids = tagged(job_id)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
