"""Mode `sweep JOB_ID [TIMEOUT_S]`: end every process of a job left on this host.

A job's processes carry REFINENET_JOB_ID=JOB_ID in their environment. The sweep SIGKILLs every live
process of the calling user that carries it, with the members of their process groups and their
descendants (which may have dropped the variable), never the sweep itself or its ancestors; it repeats
until none is left or TIMEOUT_S (default 5) has passed. Stdout: one JSON line,
``{"killed": [{"pid": P, "name": COMM}], "left": [{"pid": P, "name": COMM}]}``. Exit 0 when nothing
of the job is left, 1 otherwise, 2 for bad usage.
"""
import json
import os
import signal
import sys
import time

from launcher.hostside import procs

TAG = "REFINENET_JOB_ID"
DEFAULT_TIMEOUT_S = 5.0
USAGE = 2
POLL_S = 0.02


def job_processes(job_id, table, protected, uid):
    """Live pids of the job: tagged processes of `uid`, their groups' members and their descendants,
    less `protected` (the caller and its ancestors)."""
    tagged = [pid for pid, (_, _, state) in table.items()
              if state != procs.ZOMBIE and pid not in protected and procs.owner(pid) == uid
              and procs.has_env(pid, TAG, job_id)]
    found = set(tagged)
    groups = {table[pid][1] for pid in tagged}
    for pid, (_, pgid, state) in table.items():
        if pgid in groups and state != procs.ZOMBIE:
            found.add(pid)
    for pid in list(found):
        found.update(procs.live_descendants(pid, table))
    return sorted(pid for pid in found - protected if procs.owner(pid) == uid)


def sweep(job_id, timeout_s=DEFAULT_TIMEOUT_S, clock=time.monotonic):
    """SIGKILL the job's processes until none is left or `timeout_s` passed: (killed, left), each a list
    of {"pid", "name"}."""
    me, uid = os.getpid(), os.getuid()
    deadline = clock() + timeout_s
    killed, names = [], {}
    while True:
        table = procs.process_table()
        if table is None:
            return killed, []
        targets = job_processes(job_id, table, procs.ancestors(me, table), uid)
        if not targets or clock() >= deadline:
            left = [{"pid": pid, "name": names.get(pid) or procs.command_name(pid)} for pid in targets]
            return killed, left
        for pid in targets:
            if pid not in names:
                names[pid] = procs.command_name(pid)
                killed.append({"pid": pid, "name": names[pid]})
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(POLL_S)


def sweep_mode(args):
    """`sweep JOB_ID [TIMEOUT_S]`: see the module's docstring."""
    try:
        if len(args) not in (1, 2) or not args[0]:
            raise ValueError
        timeout_s = float(args[1]) if len(args) == 2 else DEFAULT_TIMEOUT_S
    except ValueError:
        sys.stderr.write("usage: sweep JOB_ID [TIMEOUT_S]\n")
        return USAGE
    killed, left = sweep(args[0], timeout_s)
    procs.write_all(1, (json.dumps({"killed": killed, "left": left}) + "\n").encode("utf-8"))
    procs.drain((1,))
    return 1 if left else 0
