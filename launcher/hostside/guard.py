"""Keeps one short command (`Transport.exec`) and its whole process group from outliving the launcher;
signals a process group by id (`Transport.kill_group`).

Mode `exec`. The launcher writes one JSON line on stdin,
``{"argv": [...], "env": {NAME: VALUE}, "cwd": DIR, "grace": SECONDS, "nonce": HEX}``
(`env` is laid over the guard's own environment), and keeps stdin open for the life of the
command; each further line ``signal N`` sends signal N to the command's process group.
EOF on stdin means the launcher is gone (its pipe or SSH channel closed, even by SIGKILL):
the guard sends SIGTERM to the group, waits `grace` seconds, SIGKILLs whatever is left and
exits. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to the guard itself are
forwarded to the group.

The command runs in its own session (setsid), so its process group id is its pid, and dies with the
guard (parent-death signal SIGKILL). When the command ends, members of its group still alive get the
same SIGTERM/grace/SIGKILL treatment; the guard is a child subreaper, so descendants that left the
group are found and ended too.

The command keeps separate stdout and stderr; when it and its group are gone the guard
appends ``"\\n" + nonce + " " + S + "\\n"`` to stderr so the status survives transports that
only carry 0-255. Status S: the command's exit code, or minus the number of the signal that killed
it. The guard's own exit code follows the shell convention: S, or 128 + signal, 127 when the command
could not start. Before it exits, the guard waits (up to 2 s) until its output pipes hold nothing
unread (`procs.drain`).

Mode `kill PGID SIGNAL [NAME=VALUE]`: send SIGNAL to process group PGID; with NAME=VALUE only if a
live process of the group has exactly that variable in its environment. Exit 0 when signalled, 1
when there is no such (tagged) group, 4 when not permitted, 2 for bad usage.
"""
import os
import select
import signal
import subprocess
import sys
import time

from launcher.hostside import procs

FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
CANNOT_START = 127
NOT_FOUND = 1
NOT_PERMITTED = 4
USAGE = 2


def signal_group(pgid, sig, tag=None):
    """Signal group `pgid` if it has a live member (carrying `tag` = (name, value)); a kill-mode exit code."""
    members = procs.group_members(pgid)
    if members is not None and not members:
        return NOT_FOUND
    if tag is not None and not any(procs.has_env(pid, tag[0], tag[1]) for pid in members or ()):
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


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class Guard:
    """One command under supervision: spawn, watch stdin and the command, clean the group up."""

    def __init__(self, header):
        self.argv = list(header["argv"])
        self.env = dict(os.environ)
        self.env.update(header.get("env") or {})
        self.cwd = header.get("cwd") or None
        self.grace = float(header.get("grace", 2.0))
        self.nonce = str(header.get("nonce", ""))
        self.proc = None
        self.pgid = None
        self.control = b""

    def start(self):
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
                close_fds=True, preexec_fn=procs.dies_with_parent(os.getpid()))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            message = "cannot start {}: {}".format(self.argv[0] if self.argv else "(empty command)", exc)
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

    def escaped(self, table=None):
        """Descendants that left the command's group (own session/group), still alive."""
        return [pid for pid in procs.live_descendants(os.getpid(), table)
                if pid != self.proc.pid and _pgid(pid) != self.pgid]

    def reap_orphans(self, table):
        """Reap re-parented children other than the command (whose pid must stay taken)."""
        me = os.getpid()
        for pid, (ppid, _, state) in (table or {}).items():
            if ppid == me and state == procs.ZOMBIE and pid != self.proc.pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def all_alive(self):
        table = procs.process_table()
        self.reap_orphans(table)
        return self.group_alive(table) or bool(self.escaped(table or {}))

    def send_all(self, sig):
        for pid in self.escaped():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        self.send(sig)

    def group_alive(self, table):
        members = procs.group_members(self.pgid, table)
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
        procs.drain()
        return exit_status(status)


def exec_mode(args):
    """`exec`: run the command of the header on stdin under supervision; the guard's exit code."""
    if args:
        sys.stderr.write("usage: exec  (header on stdin)\n")
        return USAGE
    procs.become_subreaper()
    header, rest = procs.read_json_line(0, "refinenet exec: the command header")
    guard = Guard(header)
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


def kill_mode(args):
    """`kill PGID SIGNAL [NAME=VALUE]`: see the module's docstring."""
    if len(args) not in (2, 3) or not args[0].isdigit() or not args[1].isdigit():
        sys.stderr.write("usage: kill PGID SIGNAL [NAME=VALUE]\n")
        return USAGE
    tag = None
    if len(args) == 3:
        name, sep, value = args[2].partition("=")
        if not sep or not name:
            sys.stderr.write(f"kill: expected NAME=VALUE, got {args[2]!r}\n")
            return USAGE
        tag = (name, value)
    return signal_group(int(args[0]), int(args[1]), tag)
