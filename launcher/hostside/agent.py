"""Mode `agent`, the host agent: one per host per attempt; starts, watches and stops that host's processes.

Runs on the host with only the standard library (Python 3.6+), started like every host program (see
`launcher.transport.hostprog`); the host document follows the program's sources on stdin (see
`launcher.agent.session`), so the host needs no copy of the launcher.

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
(its process group id is its pid) with the agent's environment (the host login's, read once) less
BASH_ENV and ENV and with SHLVL at least 1, so no shell startup file runs for it (see
`process_environment`); the document's `env` is laid over that. Every process dies with the agent
(parent-death signal SIGKILL, however the agent ends; what a process starts itself is left to the
launcher's `sweep`); the agent is a child subreaper, so descendants that leave their group are
re-parented here and none outlives a teardown. Hang check (`HangRule`, `hang_s`), on the host's clock:
a watched process with no output line and no change of its metrics file for `hang_s` seconds.

Stop (`StopPhase`): the backend's first signal to every group, grace; SIGTERM and SIGCONT to every
group and descendant, grace; SIGKILL to all, then at most `KILL_WAIT_S` for them to go.
"""
import errno
import json
import os
import select
import signal
import subprocess
import time

from launcher.hostside import files, procs

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
READ_CHUNK = 1 << 16
#: A line longer than this is passed on in pieces rather than held without end.
MAX_LINE = 1 << 20
#: How long a finished process's pipes may stay open (held by a stray child) before its exit is reported.
PIPE_SETTLE_S = 1.0
TAIL_POLL_S = 0.25
HANG_POLL_S = 1.0
#: How long the SIGKILLed processes of a teardown may take to go before the agent gives up on them.
KILL_WAIT_S = 5.0
#: Inherited variables that make a shell read a startup file even when told to read none.
SHELL_STARTUP_VARIABLES = ("BASH_ENV", "ENV")


def now():
    return time.time()


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


def process_environment(base, extra):
    """A process's environment: `base` (the agent's own) without shell startup variables, `extra` over it.

    SHLVL is at least 1: the login shell that started the agent exec'd it with SHLVL=0, and a bash
    started with SSH_CLIENT set at level 0 or 1 reads ~/.bashrc as for a remote login, also the
    `bash -c` a command runs itself (`-- bash -c ...`)."""
    env = {k: v for k, v in base.items() if k not in SHELL_STARTUP_VARIABLES}
    level = env.get("SHLVL", "")
    if not level.isdigit() or int(level) < 1:
        env["SHLVL"] = "1"
    env.update(extra or {})
    return env


class StopPhase:
    """Where a teardown is: each phase sends its signals, then waits until its deadline."""

    FIRST_SIGNAL = "first signal"   #: the backend's own stop signal went to every group; grace runs
    TERM = "term"                   #: SIGTERM + SIGCONT to every group and descendant; grace runs
    KILL = "kill"                   #: SIGKILL to all; KILL_WAIT_S for the last ones to go


class HangRule:
    """A watched source (a process or a followed file) is hung when it gave no output line and its
    metrics file did not change for `hang_s` seconds; each is reported once. Pure: `clock` (monotonic
    seconds) is injected and file times are handed in."""

    def __init__(self, hang_s, clock):
        self.hang_s = float(hang_s) if hang_s else None
        self.clock = clock
        self.last = {}
        self.mtimes = {}
        self.reported = set()

    def watch(self, key, mtime=None):
        """Start the silence clock of `key` now; `mtime` is its metrics file's time now (None: none yet)."""
        self.last[key] = self.clock()
        self.mtimes[key] = mtime

    def output(self, key):
        """`key` gave an output line."""
        if key in self.last:
            self.last[key] = self.clock()

    def metrics(self, key, mtime):
        """The metrics file of `key` has time `mtime` (None: missing); any change is a sign of life."""
        if key in self.last and mtime != self.mtimes[key]:
            self.mtimes[key] = mtime
            self.last[key] = self.clock()

    def forget(self, key):
        """`key` ended: no longer watched."""
        self.last.pop(key, None)
        self.mtimes.pop(key, None)

    def hung(self):
        """[(key, silent seconds)] of the sources silent for longer than `hang_s`, each reported once."""
        if self.hang_s is None:
            return []
        now, found = self.clock(), []
        for key, last in self.last.items():
            if key not in self.reported and now - last > self.hang_s:
                self.reported.add(key)
                found.append((key, round(now - last, 1)))
        return found


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

    def poll(self, out):
        """Frame what the file gained into `out`; whether it gained anything."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK * 4)
        except OSError:
            return False
        if not data:
            return False
        self.offset += len(data)
        self.rest = whole_lines(b"t", self.index, self.rest, data, out)
        return True

    def close(self, out):
        self.poll(out)
        if self.rest:
            whole_lines(b"t", self.index, self.rest, b"\n", out)
            self.rest = b""


class Agent:
    """The agent of one host document: its processes, followed files, hang rule and teardown."""

    def __init__(self, doc):
        self.doc = doc
        self.grace = float(doc.get("grace", 5.0))
        self.hangs = HangRule(doc.get("hang_s"), time.monotonic)
        self.procs = [Proc(i, p) for i, p in enumerate(doc.get("processes", ()))]
        self.tails = [Tail(i, t) for i, t in enumerate(doc.get("tails", ()))]
        for t in self.tails:
            if t.watch:
                self.hangs.watch(("t", t.index))
        self.by_fd = {}
        self.buffers = {}
        self.out = []
        self.control = b""
        self.stopping = None
        self.stop_phase, self.phase_end = None, 0.0
        self.stdin_open = True
        self.me = os.getpid()

    # -- output

    def emit(self, kind, **fields):
        self.out.append(b"! " + json.dumps(dict(fields, event=kind)).encode("utf-8") + b"\n")

    def flush(self):
        if not self.out:
            return
        data, self.out = b"".join(self.out), []
        try:
            procs.write_all(1, data)
        except OSError:
            pass  # the launcher is gone; stdin EOF follows

    # -- start

    def start_all(self):
        for f in self.doc.get("files", ()):
            try:
                files.write_atomic(f["path"], [f["content"].encode("utf-8")], int(f.get("mode", 0o644)))
            except OSError as exc:
                self.emit("note", message="cannot write {}: {}".format(f["path"], exc))
        for p in self.procs:
            self.start(p)
        self.emit("ready", t=now())
        self.flush()

    def start(self, p):
        spec = p.spec
        env = process_environment(os.environ, spec.get("env"))
        try:
            p.popen = subprocess.Popen(
                spec["argv"], cwd=spec.get("cwd") or None, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                preexec_fn=procs.dies_with_parent(self.me))
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
        if spec.get("watch"):
            self.hangs.watch(("p", p.index), self.metrics_mtime(p))
        self.emit("started", i=p.index, pid=p.pid, pgid=p.pid, t=now())

    @staticmethod
    def metrics_mtime(p):
        metrics = p.spec.get("metrics")
        if not metrics:
            return None
        try:
            return os.stat(metrics).st_mtime
        except OSError:
            return None

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
        self.hangs.output(("p", p.index))
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
            self.hangs.forget(("p", p.index))
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
        if self.stopping is not None:
            return
        for p in self.procs:
            if p.running:
                self.hangs.metrics(("p", p.index), self.metrics_mtime(p))
        for (kind, index), silent in self.hangs.hung():
            if kind == "p":
                self.emit("hang", i=index, silent_s=silent, t=now())
            else:
                self.emit("hang", tail=index, silent_s=silent, t=now())

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
        for pid in procs.live_descendants(self.me):
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
            self.enter(StopPhase.FIRST_SIGNAL, self.grace)
        else:
            self.term_phase()

    def enter(self, phase, wait_s):
        self.stop_phase, self.phase_end = phase, time.monotonic() + wait_s

    def term_phase(self):
        self.signal_all(signal.SIGTERM)
        self.signal_all(signal.SIGCONT)
        self.enter(StopPhase.TERM, self.grace)

    def advance_stop(self):
        if self.stopping is None:
            return
        alive = any(p.running for p in self.procs) or bool(procs.live_descendants(self.me))
        if not alive or time.monotonic() < self.phase_end:
            return
        if self.stop_phase == StopPhase.FIRST_SIGNAL:
            self.term_phase()
        elif self.stop_phase == StopPhase.TERM:
            self.signal_all(signal.SIGKILL)
            self.enter(StopPhase.KILL, KILL_WAIT_S)

    def finished(self):
        """Every process reported; leftovers (strays of finished processes) gone or killed."""
        if any(not p.reported for p in self.procs):
            return False
        if self.stopping is None:
            self.begin_stop(signal.SIGTERM)
        if not procs.live_descendants(self.me):
            return True
        return self.stop_phase == StopPhase.KILL and time.monotonic() >= self.phase_end

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
                    if t.poll(self.out):
                        self.hangs.output(("t", t.index))
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
                procs.drain()
                return 0
            self.flush()


def read_document():
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            raise SystemExit("refinenet-agent: stdin closed before the host document")
        data += chunk
    line, rest = data.split(b"\n", 1)
    return json.loads(line.decode("utf-8")), rest


def agent_mode(args):
    """`agent`: run the host document that follows on stdin; 0 once every process is gone."""
    if args:
        os.write(2, b"usage: agent  (host document on stdin)\n")
        return 2
    procs.become_subreaper()
    doc, rest = read_document()
    agent = Agent(doc)
    agent.control = rest
    return agent.run()
