"""The host agent: one per host per attempt; starts, watches and stops that host's processes.

Runs on the host with only the standard library, as `python -S -c BOOTSTRAP agent N` with its own
source and then the host document on stdin (see `launcher.agent.session`), so the host needs no
copy of the launcher. Python 3.6+.

Protocol. Stdin: one JSON line, the host document::

    {"job_id": ID, "attempt": N, "host": NAME, "grace": S,
     "files": [{"path", "content", "mode"}],               written before anything starts
     "processes": [{"name", "argv", "env", "cwd", "watch", "metrics"}],
     "tails": [{"path", "watch"}],                           files followed line by line
     "hang_s": S or null}

then control lines: ``stop SIG`` (send SIG first, then SIGTERM+SIGCONT, grace, SIGKILL) and
``signal SIG`` (send SIG to every process group). EOF on stdin means the launcher is gone (its pipe
or SSH channel closed, even by SIGKILL): everything is torn down and the agent exits. SIGTERM,
SIGINT and SIGHUP to the agent do the same.

Stdout: frames written whole by this process only, so no two processes' lines ever mix::

    o I N\n BYTES    N bytes of whole stdout lines (each ending in \n) of process I ("processes")
    e I N\n BYTES    the same for its stderr
    t J N\n BYTES    whole lines appended to tail J
    ! JSON          an event: started {i, pid, pgid, t}, error {i, message}, exit {i, status, t},
                hang {i or tail, silent_s, t}, ready {t}, done {t}, note {message}

Exit status: the exit code, or minus the signal number. Every process runs in its own session
(its process group id is its pid); the agent is a child subreaper, so descendants that leave their
group are re-parented here and none outlives a teardown. Hang check (`hang_s`), on the host's clock:
a watched process with no output line and no change of its metrics file for `hang_s` seconds.
"""
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
READ_CHUNK = 1 << 16
#: A line longer than this is passed on in pieces rather than held without end.
MAX_LINE = 1 << 20
#: How long a finished process's pipes may stay open (held by a stray child) before its exit is reported.
PIPE_SETTLE_S = 1.0
TAIL_POLL_S = 0.25
HANG_POLL_S = 1.0


def now():
    return time.time()


def become_subreaper():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def process_table():
    """{pid: (ppid, pgid, state)} from /proc; {} where /proc is unavailable."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
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
    table = process_table()
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


def whole_lines(kind, index, buffered, data, out):
    """Append one frame holding the whole lines of `buffered + data` to `out`; the partial last line
    (cut at MAX_LINE) is returned to be buffered."""
    data = buffered + data
    cut = data.rfind(b"\n") + 1
    while len(data) - cut > MAX_LINE:
        data = data[:cut + MAX_LINE] + b"\n" + data[cut + MAX_LINE:]
        cut += MAX_LINE + 1
    if cut:
        out.append(b"%s %d %d\n" % (kind, index, cut) + data[:cut])
    return data[cut:]


def write_file(path, content, mode):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(content.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Proc:
    """One process of the document and its two output pipes."""

    def __init__(self, index, spec):
        self.index = index
        self.spec = spec
        self.popen = None
        self.pid = None
        self.status = None
        self.exited_at = None
        self.reported = False
        self.open_fds = {}
        self.last_output = time.monotonic()
        self.hang_reported = False

    @property
    def running(self):
        return self.popen is not None and self.status is None


class Tail:
    """A file followed from its start; lines appear as `t J` frames."""

    def __init__(self, index, spec):
        self.index, self.path = index, spec["path"]
        self.watch = bool(spec.get("watch"))
        self.offset = 0
        self.rest = b""
        self.last_output = time.monotonic()
        self.hang_reported = False

    def poll(self, out):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK * 4)
        except OSError:
            return
        if not data:
            return
        self.offset += len(data)
        self.last_output = time.monotonic()
        self.rest = whole_lines(b"t", self.index, self.rest, data, out)

    def close(self, out):
        self.poll(out)
        if self.rest:
            whole_lines(b"t", self.index, self.rest, b"\n", out)
            self.rest = b""


class Agent:
    def __init__(self, doc):
        self.doc = doc
        self.grace = float(doc.get("grace", 5.0))
        self.hang_s = doc.get("hang_s")
        self.procs = [Proc(i, p) for i, p in enumerate(doc.get("processes", ()))]
        self.tails = [Tail(i, t) for i, t in enumerate(doc.get("tails", ()))]
        self.by_fd = {}
        self.buffers = {}
        self.out = []
        self.control = b""
        self.stopping = None
        self.stop_phase, self.phase_end = None, 0.0
        self.stdin_open = True

    # -- output

    def emit(self, kind, **fields):
        self.out.append(b"! " + json.dumps(dict(fields, event=kind)).encode("utf-8") + b"\n")

    def flush(self):
        if not self.out:
            return
        data, self.out = b"".join(self.out), []
        view = memoryview(data)
        while view:
            try:
                n = os.write(1, view)
            except InterruptedError:
                continue
            except OSError:
                return  # the launcher is gone; stdin EOF follows
            view = view[n:]

    # -- start

    def start_all(self):
        for f in self.doc.get("files", ()):
            try:
                write_file(f["path"], f["content"], int(f.get("mode", 0o644)))
            except OSError as exc:
                self.emit("note", message="cannot write {}: {}".format(f["path"], exc))
        for p in self.procs:
            self.start(p)
        self.emit("ready", t=now())
        self.flush()

    def start(self, p):
        spec = p.spec
        env = dict(os.environ)
        env.update(spec.get("env") or {})
        try:
            p.popen = subprocess.Popen(
                spec["argv"], cwd=spec.get("cwd") or None, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            p.status = 127
            p.exited_at = time.monotonic()
            p.reported = True
            self.emit("error", i=p.index, message="cannot start {}: {}".format(spec["argv"][0], exc))
            self.emit("exit", i=p.index, status=127, t=now())
            return
        p.pid = p.popen.pid
        for kind, stream in ((b"o", p.popen.stdout), (b"e", p.popen.stderr)):
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self.by_fd[fd] = (p, kind)
            self.buffers[fd] = b""
            p.open_fds[fd] = stream
        self.emit("started", i=p.index, pid=p.pid, pgid=p.pid, t=now())

    # -- reading

    def read_fd(self, fd):
        p, kind = self.by_fd[fd]
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            rest = self.buffers.pop(fd, b"")
            if rest:
                whole_lines(kind, p.index, rest, b"\n", self.out)
            del self.by_fd[fd]
            p.open_fds.pop(fd).close()
            return
        p.last_output = time.monotonic()
        self.buffers[fd] = whole_lines(kind, p.index, self.buffers[fd], data, self.out)

    def read_control(self):
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.begin_stop(signal.SIGTERM)
            return
        self.control += data
        while b"\n" in self.control:
            line, self.control = self.control.split(b"\n", 1)
            words = line.split()
            if len(words) == 2 and words[1].isdigit():
                if words[0] == b"stop":
                    self.begin_stop(int(words[1]))
                elif words[0] == b"signal":
                    self.signal_groups(int(words[1]))

    # -- exits

    def reap(self):
        """Reap every exited child (the agent's processes and re-parented orphans)."""
        by_pid = {p.pid: p for p in self.procs if p.running}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            p = by_pid.get(pid)
            if p is None:
                continue
            p.status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            p.exited_at = time.monotonic()
            p.popen.returncode = p.status
            if self.stopping is None:
                self.kill_group(p.pid, signal.SIGTERM)

    def report_exits(self):
        for p in self.procs:
            if p.status is None or p.reported:
                continue
            if p.open_fds and time.monotonic() - p.exited_at < PIPE_SETTLE_S:
                continue
            for fd in list(p.open_fds):
                self.read_fd(fd)
            p.reported = True
            self.emit("exit", i=p.index, status=p.status, t=now())

    # -- hangs

    def check_hangs(self):
        if not self.hang_s or self.stopping is not None:
            return
        mono, wall = time.monotonic(), now()
        for p in self.procs:
            if not p.running or p.hang_reported or not p.spec.get("watch"):
                continue
            last = p.last_output
            metrics = p.spec.get("metrics")
            if metrics:
                try:
                    mtime = os.stat(metrics).st_mtime
                except OSError:
                    mtime = None
                if mtime is not None:
                    last = max(last, mono - (wall - mtime))
            silent = mono - last
            if silent > float(self.hang_s):
                p.hang_reported = True
                self.emit("hang", i=p.index, silent_s=round(silent, 1), t=now())
        for t in self.tails:
            silent = mono - t.last_output
            if t.watch and not t.hang_reported and silent > float(self.hang_s):
                t.hang_reported = True
                self.emit("hang", tail=t.index, silent_s=round(silent, 1), t=now())

    # -- stopping

    def kill_group(self, pgid, sig):
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass

    def signal_groups(self, sig):
        for p in self.procs:
            if p.pid is not None:
                self.kill_group(p.pid, sig)

    def signal_all(self, sig):
        """`sig` to every process group started here and every live descendant of the agent."""
        self.signal_groups(sig)
        for pid in live_descendants(os.getpid()):
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def begin_stop(self, first):
        if self.stopping is not None:
            return
        self.stopping = first
        if first not in (signal.SIGTERM, signal.SIGKILL):
            self.signal_groups(first)
            self.stop_phase, self.phase_end = 0, time.monotonic() + self.grace
        else:
            self.term_phase()

    def term_phase(self):
        self.signal_all(signal.SIGTERM)
        self.signal_all(signal.SIGCONT)
        self.stop_phase, self.phase_end = 1, time.monotonic() + self.grace

    def advance_stop(self):
        if self.stopping is None:
            return
        alive = any(p.running for p in self.procs) or bool(live_descendants(os.getpid()))
        if not alive:
            return
        if time.monotonic() < self.phase_end:
            return
        if self.stop_phase == 0:
            self.term_phase()
        elif self.stop_phase == 1:
            self.signal_all(signal.SIGKILL)
            self.stop_phase, self.phase_end = 2, time.monotonic() + 5.0

    def finished(self):
        """Every process reported; leftovers (strays of finished processes) gone or killed."""
        if any(not p.reported for p in self.procs):
            return False
        if self.stopping is None:
            self.begin_stop(signal.SIGTERM)
        if not live_descendants(os.getpid()):
            return True
        return self.stop_phase == 2 and time.monotonic() >= self.phase_end

    # -- loop

    def run(self):
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), lambda s, f: self.begin_stop(signal.SIGTERM))
        os.set_blocking(0, False)
        self.start_all()
        next_tail = next_hang = time.monotonic()
        while True:
            watched = list(self.by_fd) + [wake_r] + ([0] if self.stdin_open else [])
            timeout = TAIL_POLL_S if self.tails else HANG_POLL_S
            if self.stopping is not None or any(p.status is not None and not p.reported for p in self.procs):
                timeout = 0.05
            try:
                ready = select.select(watched, [], [], timeout)[0]
            except InterruptedError:
                ready = []
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    raise
                ready = []
            for fd in ready:
                if fd == wake_r:
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except OSError:
                        pass
                elif fd == 0:
                    self.read_control()
                else:
                    self.read_fd(fd)
            self.reap()
            mono = time.monotonic()
            if self.tails and mono >= next_tail:
                next_tail = mono + TAIL_POLL_S
                for t in self.tails:
                    t.poll(self.out)
            if mono >= next_hang:
                next_hang = mono + HANG_POLL_S
                self.check_hangs()
            self.advance_stop()
            self.report_exits()
            if self.finished():
                for t in self.tails:
                    t.close(self.out)
                self.emit("done", t=now())
                self.flush()
                drain()
                return 0
            self.flush()


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


def read_document():
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            raise SystemExit("refinenet-agent: stdin closed before the host document")
        data += chunk
    line, rest = data.split(b"\n", 1)
    return json.loads(line.decode("utf-8")), rest


def main():
    become_subreaper()
    doc, rest = read_document()
    agent = Agent(doc)
    agent.control = rest
    return agent.run()


if __name__ == "__main__" or __name__ == "refinenet-agent":
    sys.exit(main())
