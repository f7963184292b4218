"""The host's processes as /proc shows them, and the kernel settings that keep a program's children in hand.

One copy of each helper for every program that runs on a host (the guard, the agent, the sweep).
Linux /proc; where it is missing `process_table` says so with None and callers fall back on signals.
"""
import json
import os
import signal
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ZOMBIE = b"Z"

_prctl = []


def prctl_function():
    """libc's prctl, resolved once (before any fork: a child must not load libraries); None off Linux."""
    if not _prctl:
        try:
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError, ImportError):
            _prctl.append(None)
    return _prctl[0]


def process_table():
    """{pid: (ppid, pgid, state)} of every process, from /proc; None where /proc cannot be read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    table = {}
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2:
            table[int(name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def live_descendants(root, table=None, skip=()):
    """Live (non-zombie) descendants of `root`, whatever their session or group; the subtrees of the
    pids in `skip` are left out."""
    if table is None:
        table = process_table() or {}
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    skip = set(skip)
    found, todo = [], [pid for pid in children.get(root, ()) if pid not in skip]
    while todo:
        pid = todo.pop()
        if table[pid][2] != ZOMBIE:
            found.append(pid)
        todo.extend(c for c in children.get(pid, ()) if c not in skip)
    return found


def group_members(pgid, table=None):
    """Pids of live (non-zombie) processes in group `pgid`; None where /proc cannot be read."""
    if table is None:
        table = process_table()
    if table is None:
        return None
    return [pid for pid, (_, group, state) in table.items() if group == pgid and state != ZOMBIE]


def ancestors(pid, table):
    """`pid` and every process above it, up to the first one `table` does not know."""
    chain = set()
    while pid in table and pid not in chain:
        chain.add(pid)
        pid = table[pid][0]
    chain.add(pid)
    return chain


def has_env(pid, name, value):
    """Whether process `pid` has exactly `name=value` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    return (name + "=" + value).encode("utf-8", "surrogateescape") in entries


def owner(pid):
    """The uid that owns process `pid`, None once it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def command_name(pid):
    """The process's command name (/proc/PID/comm), '' once it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace")
    except OSError:
        return ""


def become_subreaper():
    """Orphans of our children are re-parented to this process (Linux), so none escapes a teardown:
    e.g. msrun runs its workers in sessions of their own, and SIGTERM to msrun orphans them."""
    prctl = prctl_function()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def dies_with_parent(parent_pid):
    """A `preexec_fn` for children of this (single-threaded) process: the kernel SIGKILLs the child when
    its parent dies (PR_SET_PDEATHSIG, kept across exec), and a child whose parent is already gone
    exits at once instead of running as an orphan."""
    prctl = prctl_function()

    def setup():
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(127)

    return setup


def drain(fds=(1, 2), timeout=2.0):
    """Wait (at most `timeout` s) until the pipes on `fds` hold nothing unread: srun's step daemon can
    drop what is still in a task's output pipe when the task exits."""
    import fcntl
    import struct
    import termios

    deadline = time.monotonic() + timeout
    for fd in fds:
        while time.monotonic() < deadline:
            try:
                left = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                break
            if left <= 0:
                break
            time.sleep(0.002)


def write_all(fd, data):
    """Write all of `data` to `fd` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


def read_ready(fd, size=1 << 16):
    """What a non-blocking `fd` has now: bytes, b"" at its end (or a read error), None when nothing yet."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def read_json_line(fd, what):
    """The first line read from `fd` as JSON, and the bytes read past it; SystemExit naming `what` when
    the stream ends before it."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            raise SystemExit(f"{what}: stdin closed before it")
        data += chunk
    line, rest = data.split(b"\n", 1)
    return json.loads(line.decode("utf-8")), rest
