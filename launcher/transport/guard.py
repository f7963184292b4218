"""Keeps one short command (`Transport.exec`) and its whole process group from outliving the launcher.

Runs on every host with the host's own python and only the standard library, either as
`python -m launcher.transport.guard MODE` or as this file's source: `python -c SOURCE MODE`
(the transports send the source on stdin, ahead of the header: see `guarded.BOOTSTRAP`).

Protocol (mode `exec`). The launcher writes one JSON line on the guard's stdin,
``{"argv": [...], "env": {NAME: VALUE}, "cwd": DIR, "grace": SECONDS, "nonce": HEX}``
(`env` is laid over the guard's own environment), and keeps stdin open for the life of the
command; each further line ``signal N`` sends signal N to the command's process group.
EOF on stdin means the launcher is gone (its pipe or SSH channel closed, even by SIGKILL):
the guard sends SIGTERM to the group, waits `grace` seconds, SIGKILLs whatever is left and
exits. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to the guard itself are
forwarded to the group.

The command runs in its own session (setsid), so its process group id is its pid. When the
command ends, members of its group still alive get the same SIGTERM/grace/SIGKILL treatment.

The command keeps separate stdout and stderr; when it and its group are gone the guard
appends ``"\\n" + nonce + " " + S + "\\n"`` to stderr so the status survives transports that
only carry 0-255.

Status S: the command's exit code, or minus the number of the signal that killed it. The
guard's own exit code follows the shell convention: S, or 128 + signal, 127 when the command
could not start.

`kill PGID SIGNAL [NAME=VALUE]`: send SIGNAL to process group PGID; with NAME=VALUE only if a
live process of the group has exactly that variable in its environment. Exit 0 when
signalled, 1 when there is no such (tagged) group, 4 when not permitted.

`read PATH`: the file's bytes on stdout (1 and a message when it does not exist).

Before it exits, the guard waits (up to 2 s) until its output pipes hold nothing unread: srun's step
daemon can drop what a task left in its pipe when the task exits.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
CANNOT_START = 127
NOT_FOUND = 1
NOT_PERMITTED = 4


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


def group_members(pgid):
    """Pids of live (non-zombie) processes in group `pgid`; None where /proc is unavailable."""
    table = process_table()
    if table is None:
        return None
    return [pid for pid, (_, group, state) in table.items() if group == pgid and state != b"Z"]


def process_table():
    """{pid: (ppid, pgid, state)} of every process, from /proc; None where /proc is unavailable."""
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


def live_descendants(root):
    """Live (non-zombie) descendants of `root`, whatever their session or group."""
    table = process_table() or {}
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if table[pid][2] != b"Z":
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def become_subreaper():
    """Orphans of the command are re-parented to this guard (Linux), so none escapes teardown:
    e.g. msrun runs its workers in sessions of their own, and SIGTERM to msrun orphans them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def has_env(pid, name, value):
    """Whether process `pid` has exactly `name=value` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    return (name + "=" + value).encode("utf-8", "surrogateescape") in entries


def signal_group(pgid, sig, tag=None):
    """Signal group `pgid` if it has a live member (carrying `tag` = (name, value)); a kill-mode exit code."""
    members = group_members(pgid)
    if members is not None and not members:
        return NOT_FOUND
    if tag is not None and not any(has_env(pid, tag[0], tag[1]) for pid in members or ()):
        return NOT_FOUND
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return NOT_FOUND
    except PermissionError:
        return NOT_PERMITTED
    return 0


def exit_status(returncode):
    """The guard's process exit code for a command status (shell convention for signals)."""
    return 128 - returncode if returncode < 0 else returncode


class Guard:
    """One command under supervision: spawn, watch stdin and the command, clean the group up."""

    def __init__(self, header, mode):
        self.argv = list(header["argv"])
        self.env = dict(os.environ)
        self.env.update(header.get("env") or {})
        self.cwd = header.get("cwd") or None
        self.grace = float(header.get("grace", 2.0))
        self.nonce = str(header.get("nonce", ""))
        self.mode = mode
        self.proc = None
        self.pgid = None
        self.control = b""

    def start(self):
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            message = f"cannot start {self.argv[0] if self.argv else '(empty command)'}: {exc}"
            os.write(2, (message + "\n").encode("utf-8", "replace"))
            return False
        self.pgid = self.proc.pid
        return True

    def leader_exited(self):
        """Whether the command has exited; it stays unreaped (its pid, so its group id, stays taken)."""
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def escaped(self):
        """Descendants that left the command's group (own session/group), still alive."""
        return [pid for pid in live_descendants(os.getpid())
                if pid != self.proc.pid and _pgid(pid) != self.pgid]

    def reap_orphans(self):
        """Reap re-parented children other than the command (whose pid must stay taken)."""
        for pid, (ppid, _, state) in (process_table() or {}).items():
            if ppid == os.getpid() and state == b"Z" and pid != self.proc.pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def all_alive(self):
        self.reap_orphans()
        return self.group_alive() or bool(self.escaped())

    def send_all(self, sig):
        for pid in self.escaped():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        self.send(sig)

    def group_alive(self):
        members = group_members(self.pgid)
        if members is None:
            if self.leader_exited():
                self.proc.wait()
            try:
                os.killpg(self.pgid, 0)
            except OSError:
                return False
            return True
        return bool(members)

    def send(self, sig):
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, sig)
        except OSError:
            pass

    def stop_group(self):
        """SIGTERM the group and every escaped descendant, SIGKILL them after `grace` seconds;
        returns once they are gone (or 5 s after)."""
        if not self.all_alive():
            return
        self.send_all(signal.SIGTERM)
        for sig, wait in ((signal.SIGKILL, self.grace), (None, 5.0)):
            deadline = time.monotonic() + wait
            while self.all_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if sig is None or not self.all_alive():
                return
            self.send_all(sig)

    def handle_control(self, data):
        self.control += data
        while b"\n" in self.control:
            line, self.control = self.control.split(b"\n", 1)
            words = line.split()
            if len(words) == 2 and words[0] == b"signal" and words[1].isdigit():
                self.send(int(words[1]))

    def watch(self, wake):
        """Until the command exits (False) or the launcher hangs up (True)."""
        while not self.leader_exited():
            try:
                ready = select.select([0, wake], [], [], 1.0)[0]
            except InterruptedError:
                continue
            if wake in ready:
                try:
                    os.read(wake, 4096)
                except BlockingIOError:
                    pass
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    return True
                self.handle_control(data)
        return False

    def finish(self):
        self.stop_group()
        status = self.proc.wait()
        try:
            os.write(2, f"\n{self.nonce} {status}\n".encode("ascii"))
        except OSError:
            pass
        drain()
        return exit_status(status)


def copy_out(path):
    """The file's bytes on stdout, then wait until they have been read; 1 (and a message) if it is missing."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        sys.stderr.write(f"No such file: {path}\n")
        return NOT_FOUND
    with f:
        while True:
            data = f.read(1 << 20)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    drain((1,))
    return 0


def read_header():
    """The first line of stdin as JSON, and the bytes read past it."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            raise SystemExit("refinenet-guard: stdin closed before the command header")
        data += chunk
    line, rest = data.split(b"\n", 1)
    return json.loads(line.decode("utf-8")), rest


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def supervise(mode):
    become_subreaper()
    header, rest = read_header()
    guard = Guard(header, mode)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    for name in FORWARDED:
        signal.signal(getattr(signal, name), lambda signum, frame: guard.send(signum))
    if not guard.start():
        return CANNOT_START
    guard.handle_control(rest)
    guard.watch(wake_r)
    return guard.finish()


def main(argv):
    mode = argv[0] if argv else ""
    if mode == "exec":
        return supervise(mode)
    if mode == "read" and len(argv) == 2:
        return copy_out(argv[1])
    if mode == "kill" and len(argv) in (3, 4) and argv[1].isdigit() and argv[2].isdigit():
        tag = None
        if len(argv) == 4:
            name, sep, value = argv[3].partition("=")
            if not sep or not name:
                sys.stderr.write(f"refinenet-guard: expected NAME=VALUE, got {argv[3]!r}\n")
                return 2
            tag = (name, value)
        return signal_group(int(argv[1]), int(argv[2]), tag)
    sys.stderr.write("usage: guard exec  (header on stdin)\n       guard kill PGID SIGNAL [NAME=VALUE]\n"
                     "       guard read PATH\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
