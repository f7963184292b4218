"""The processes of one attempt on one host, as the host agent runs them (launcher/hostside/agent.py).

`ProcSet` starts the attempt's processes (each in its own session, dying with the agent), frames their
output into whole lines, follows files (msrun worker logs), applies the hang rule, reaps exits and
tears the set down in named phases. It never blocks: the agent's loop hands it the ready descriptors
and calls `tick()`; what it reports goes into the agent's output list as frames and events, each event
carrying the attempt number `a`.

Frames (written whole by the agent only, so no two processes' lines ever mix)::

    o I N\n BYTES    N bytes of whole stdout lines (each ending in \n) of process I of the attempt
    e I N\n BYTES    the same for its stderr
    t J N\n BYTES    whole lines appended to followed file J

Events: started {i, pid, pgid, t, warm; warm_s: seconds taking its warm interpreter took}, error {i,
message}, exit {i, status, t}, hang {i or tail, silent_s, t}, ready {t}, done {t}, note {message}. Exit
status: the exit code, or minus the signal number.

Every process runs in its own session (its process group id is its pid) with the agent's environment
(the host login's, read once) less BASH_ENV and ENV and with SHLVL at least 1, so no shell startup
file runs for it (see `process_environment`); the document's `env` is laid over that. Every process
dies with the agent (parent-death signal SIGKILL); descendants that leave their group are re-parented
to the agent (a child subreaper), so none outlives a teardown. Hang check (`HangRule`), on the host's
clock: a watched process with no output line and no change of its metrics file for `hang_s` seconds.
With `startup_s` in the document, a source that has not made its first step yet (no output line holding
the document's `progress` mark, no `first_step` event in its metrics file) may be silent for `startup_s`
instead: imports, cluster formation and the first graph compile print nothing for a while.

Stop (`StopPhase`): the backend's first signal to every group, grace; SIGTERM and SIGCONT to every
group and descendant, grace; SIGKILL to all, then at most `KILL_WAIT_S` for them to go.
"""
import json
import os
import signal
import subprocess
import time

from launcher.hostside import files, procs

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
    metrics file did not change for `hang_s` seconds; each is reported once. With `startup_s`, a source
    is starting until its first step (`progressed`), and a starting source may be silent for `startup_s`
    (at least `hang_s`). Pure: `clock` (monotonic seconds) is injected and file times are handed in."""

    def __init__(self, hang_s, clock, startup_s=None):
        self.hang_s = float(hang_s) if hang_s else None
        self.startup_s = max(float(startup_s), self.hang_s) if startup_s and self.hang_s else None
        self.clock = clock
        self.last = {}
        self.mtimes = {}
        self.reported = set()
        self.starting = set()

    def watch(self, key, mtime=None):
        """Start the silence clock of `key` now; `mtime` is its metrics file's time now (None: none yet)."""
        self.last[key] = self.clock()
        self.mtimes[key] = mtime
        if self.startup_s is not None:
            self.starting.add(key)

    def is_starting(self, key):
        """Whether `key` is watched and has not made its first step yet (start-up allowance only)."""
        return key in self.starting

    def progressed(self, key):
        """`key` made a step: a sign of life, and its start-up is over."""
        self.output(key)
        self.starting.discard(key)

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
        self.starting.discard(key)

    def hung(self):
        """[(key, silent seconds)] of the sources silent for longer than their limit (`hang_s`; `startup_s`
        while starting), each reported once."""
        if self.hang_s is None:
            return []
        now, found = self.clock(), []
        for key, last in self.last.items():
            limit = self.startup_s if key in self.starting else self.hang_s
            if key not in self.reported and now - last > limit:
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
        """Frame what the file gained into `out`; the bytes it gained (empty: nothing)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK * 4)
        except OSError:
            return b""
        if not data:
            return b""
        self.offset += len(data)
        self.rest = whole_lines(b"t", self.index, self.rest, data, out)
        return data

    def close(self, out):
        self.poll(out)
        if self.rest:
            whole_lines(b"t", self.index, self.rest, b"\n", out)
            self.rest = b""


class MetricsTail:
    """A process's metrics JSONL followed from where it ended when the attempt began: its `event`
    records (the workload's phases: imports, cluster formed, checkpoint loaded, first step...) are
    handed on as `workload` events."""

    def __init__(self, path):
        self.path = path
        try:
            self.offset = os.stat(path).st_size
        except OSError:
            self.offset = 0
        self.rest = b""

    def poll(self):
        """The new event records (dicts)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK * 4)
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        found = []
        for line in data[:cut].splitlines():
            if b'"event"' not in line:
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                found.append(record)
        return found


class ProcSet:
    """The processes and followed files of one attempt's host document (see the module docstring).

    `out` is the agent's output list (frames and events go there); `keep_fds` are descriptors every
    process inherits (the job's lease on this host: it is free only when the last of them is gone).
    """

    def __init__(self, doc, out, keep_fds=(), others=lambda: (), warm=lambda name, spec: None):
        self.doc = doc
        self.attempt = doc.get("attempt")
        self.grace = float(doc.get("grace", 5.0))
        self.hangs = HangRule(doc.get("hang_s"), time.monotonic, doc.get("startup_s"))
        #: What marks a progress line (a step done) in a process's output: its start-up is over.
        self.progress_mark = (doc.get("progress") or "").encode("utf-8")
        self.procs = [Proc(i, p) for i, p in enumerate(doc.get("processes", ()))]
        self.tails = [Tail(i, t) for i, t in enumerate(doc.get("tails", ()))]
        for t in self.tails:
            if t.watch:
                self.hangs.watch(("t", t.index))
        self.by_fd = {}
        self.buffers = {}
        self.out = out
        self.keep_fds = tuple(keep_fds)
        #: Pids of the agent's other children (short commands, warm interpreters): not this set's.
        self.others = others
        #: warm(name, spec): a started process (a Popen with stdout/stderr pipes) of a warm interpreter
        #: that took the process's command, or None to start it cold.
        self.warm = warm
        self.stopping = None
        self.stop_phase, self.phase_end = None, 0.0
        self.me = os.getpid()
        self.next_tail = self.next_hang = time.monotonic()
        self.ended = False
        self.metrics = {p.index: MetricsTail(p.spec["metrics"]) for p in self.procs if p.spec.get("metrics")}

    # -- output

    def emit(self, kind, **fields):
        self.out.append(b"! " + json.dumps(dict(fields, event=kind, a=self.attempt)).encode("utf-8") + b"\n")

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

    def start(self, p):
        spec = p.spec
        env = process_environment(os.environ, spec.get("env"))
        began = time.monotonic()
        popen = self.warm(spec["name"], spec) if spec.get("warm") else None
        if popen is not None:
            p.popen = popen
            self.adopt(p, warm=True, warm_s=time.monotonic() - began)
            return
        try:
            p.popen = subprocess.Popen(
                spec["argv"], cwd=spec.get("cwd") or None, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                pass_fds=self.keep_fds, preexec_fn=procs.dies_with_parent(self.me))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            p.status = 127
            p.exited_at = time.monotonic()
            p.reported = True
            self.emit("error", i=p.index, message="cannot start {}: {}".format(spec["argv"][0], exc))
            self.emit("exit", i=p.index, status=127, t=now())
            return
        self.adopt(p)

    def adopt(self, p, warm=False, warm_s=0.0):
        """Watch the started process `p.popen`: its pipes, its hang rule; report it started (from a warm
        interpreter: with `warm_s`, how long taking it took, its imports' unfinished part included)."""
        p.pid = p.popen.pid
        for kind, stream in ((b"o", p.popen.stdout), (b"e", p.popen.stderr)):
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self.by_fd[fd] = (p, kind)
            self.buffers[fd] = b""
            p.open_fds[fd] = stream
        if p.spec.get("watch"):
            self.hangs.watch(("p", p.index), self.metrics_mtime(p))
        fields = dict(warm=True, warm_s=round(warm_s, 3)) if warm else dict(warm=False)
        self.emit("started", i=p.index, pid=p.pid, pgid=p.pid, t=now(), **fields)

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
        data = procs.read_ready(fd, READ_CHUNK)
        if data is None:
            return
        if not data:
            rest = self.buffers.pop(fd, b"")
            if rest:
                whole_lines(kind, p.index, rest, b"\n", self.out)
            del self.by_fd[fd]
            p.open_fds.pop(fd).close()
            return
        self.saw(("p", p.index), self.buffers[fd], data)
        self.buffers[fd] = whole_lines(kind, p.index, self.buffers[fd], data, self.out)

    def saw(self, key, before, data):
        """Output `data` (after `before`, the unfinished line so far) of source `key`: a sign of life, and
        the end of its start-up when it holds the progress mark."""
        mark = self.progress_mark
        if mark and self.hangs.is_starting(key) and mark in before[-len(mark):] + data:
            self.hangs.progressed(key)
        else:
            self.hangs.output(key)

    # -- exits

    def running_pids(self):
        return {p.pid: p for p in self.procs if p.running}

    def exited(self, pid, status):
        """The agent reaped child `pid` (a wait status); False when it is not a process of this set."""
        p = self.running_pids().get(pid)
        if p is None:
            return False
        p.status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        p.exited_at = time.monotonic()
        p.popen.returncode = p.status
        self.hangs.forget(("p", p.index))
        if self.stopping is None:
            self.kill_group(p.pid, signal.SIGTERM)
        return True

    def report_exits(self):
        for p in self.procs:
            if p.status is None or p.reported:
                continue
            if p.open_fds and time.monotonic() - p.exited_at < PIPE_SETTLE_S:
                continue
            for fd in list(p.open_fds):
                self.read_fd(fd)
            self.forward_metrics(p.index)
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

    def forward_metrics(self, index=None):
        """The workload's new event records, as `workload` events (of process `index`, or all)."""
        for i, tail in self.metrics.items():
            if index is None or i == index:
                for record in tail.poll():
                    if record.get("event") == "first_step":
                        self.hangs.progressed(("p", i))
                    self.emit("workload", i=i, record=record)

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

    def descendants(self):
        """Live processes of this set: the agent's descendants but its other children's subtrees."""
        return procs.live_descendants(self.me, skip=self.others())

    def signal_all(self, sig):
        """`sig` to every process group started here and every live descendant of the agent."""
        self.signal_groups(sig)
        for pid in self.descendants():
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
        alive = any(p.running for p in self.procs) or bool(self.descendants())
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
        if not self.descendants():
            return True
        return self.stop_phase == StopPhase.KILL and time.monotonic() >= self.phase_end

    # -- one turn of the agent's loop

    def fds(self):
        """The output pipes to watch."""
        return list(self.by_fd)

    def timeout(self):
        """How long the agent's select may wait for this set."""
        if self.stopping is not None or any(p.status is not None and not p.reported for p in self.procs):
            return 0.05
        return TAIL_POLL_S if self.tails else HANG_POLL_S

    def tick(self):
        """Follow files, check hangs, advance a teardown, report exits; True once the set is done (every
        process reported and gone): `done` was emitted."""
        if self.ended:
            return True
        mono = time.monotonic()
        if self.tails and mono >= self.next_tail:
            self.next_tail = mono + TAIL_POLL_S
            for t in self.tails:
                before = t.rest
                data = t.poll(self.out)
                if data:
                    self.saw(("t", t.index), before, data)
        if mono >= self.next_hang:
            self.next_hang = mono + HANG_POLL_S
            self.check_hangs()
            self.forward_metrics()
        self.advance_stop()
        self.report_exits()
        if not self.finished():
            return False
        for t in self.tails:
            t.close(self.out)
        self.emit("done", t=now())
        self.ended = True
        return True

    def rank_pids(self):
        """Pids of the running processes that carry ranks (the watched ones), by process index."""
        return {p.index: p.pid for p in self.procs if p.running}
