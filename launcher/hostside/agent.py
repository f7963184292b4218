"""Mode `agent`, the host agent: one per host per job; the launcher's hands on that host for the whole job.

Runs on the host with only the standard library (Python 3.6+), started like every host program (see
`launcher.transport.hostprog`) over one stream (an SSH channel, a pipe, an srun step). It lives from the
job's start to its end, across attempts and stages, and does everything the job needs on its host:

* short commands (`run`): host checks, device tools, checkpoint scans, health samples, a free port. They
  run as its children, not through a new login, so a host pays its login shell's startup files once;
* the job's lease on the host's devices or slots, and its place in the host's wait queue (`ticket`,
  `lease`, `wait`, `release`; launcher/hostside/hoststate.py). The lease's descriptor goes to every
  process of every attempt, so it is free only when the last of them is gone, and it is kept between
  attempts: nothing can slip in during a restart;
* each attempt's processes (`attempt`; launcher/hostside/procset.py), stopped with `stop` while the
  agent stays for the next one;
* the Python stacks of the attempt's processes (`stacks`; launcher/hostside/stacks.py), and the save
  request of `stop --save` (`save`: the workload's request file is created).

Protocol. Stdin: one JSON line, the job document ``{"job_id", "host"}``, then one JSON object per line,
each an operation ``{"op": ..., "id": ...}``:

    run {id, argv, env, cwd, timeout}      -> result {id, rc, out, err, timed_out}
    ticket {id, state_dir, request}        -> ticket {id, ok, error}
    lease {id, state_dir, request}         -> lease {id, granted, report, error}  (request `allow_cordoned`:
                                              the job ran there before the host was cordoned)
    wait {id}                              -> lease_wait {id, report, granted} on every change of place
    release {id, what: lease|ticket|all}   -> released {id}
    state {id, command, state_dir, payload} -> state {id, result, error}  (hoststate.COMMANDS)
    attempt {doc}                          -> the attempt's frames and events (procset.py), done {a}
    stop {sig}, signal {sig}               the current attempt's processes
    save {path}                            -> saving {path, error}
    warm {processes?}                      -> warming {names}: warm interpreters for the last attempt's
                                              processes, or those given (launcher/hostside/warm.py), taken
                                              by the next one
    stacks {id, pids, timeout}             -> stacks {id, records}
    exit                                   tear down and exit 0

Stdout: the attempt's output frames and ``! JSON`` events (procset.py), and ``hello {pid, t}`` first.
EOF on stdin means the launcher is gone (its pipe or SSH channel closed, even by SIGKILL): the attempt
is torn down, the lease and ticket released, and the agent exits. SIGTERM, SIGINT and SIGHUP do the same.
Every child dies with the agent (parent-death signal); the agent is a child subreaper.
"""
import errno
import json
import os
import select
import signal
import subprocess
import time

from launcher.hostside import files, procs
from launcher.hostside.procset import ProcSet, process_environment

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
#: How long a process of an attempt may wait for its warm interpreter to finish importing.
WARM_READY_S = 120.0
READ_CHUNK = 1 << 16
#: What a short command may print before the rest is dropped (it is said so in its result).
MAX_OUTPUT = 64 << 20
#: How often a waiting lease looks at the host's queue again.
WAIT_POLL_S = 0.25
#: After EOF, how long the teardown of the current attempt may take before the agent exits anyway.
EXIT_WAIT_S = 30.0


def now():
    return time.time()


class Command:
    """A short command of a `run` operation: its output, collected until it exits or times out."""

    def __init__(self, op, parent):
        self.id = op.get("id")
        self.deadline = time.monotonic() + float(op.get("timeout") or 60.0)
        self.out, self.err = [], []
        self.size = 0
        self.status = None
        self.timed_out = False
        self.popen = subprocess.Popen(
            [str(a) for a in op["argv"]], cwd=op.get("cwd") or None,
            env=process_environment(os.environ, op.get("env")), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
            preexec_fn=procs.dies_with_parent(parent))
        self.pid = self.popen.pid
        self.fds = {}
        for stream, chunks in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            os.set_blocking(stream.fileno(), False)
            self.fds[stream.fileno()] = (stream, chunks)

    def read(self, fd):
        stream, chunks = self.fds[fd]
        data = procs.read_ready(fd, READ_CHUNK)
        if data is None:
            return
        if not data:
            stream.close()
            del self.fds[fd]
            return
        if self.size < MAX_OUTPUT:
            chunks.append(data)
        self.size += len(data)

    @property
    def finished(self):
        return self.status is not None and not self.fds

    def expire(self):
        """Past its deadline: kill its whole group."""
        if not self.timed_out and self.status is None and time.monotonic() >= self.deadline:
            self.timed_out = True
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def result(self):
        text = b"".join(self.out).decode("utf-8", "replace"), b"".join(self.err).decode("utf-8", "replace")
        truncated = self.size > MAX_OUTPUT
        return {"id": self.id, "rc": None if self.timed_out else self.status, "out": text[0],
                "err": text[1] + (f"\n(output cut at {MAX_OUTPUT} bytes)" if truncated else ""),
                "timed_out": self.timed_out}


class Agent:
    """The host agent of one job (see the module docstring)."""

    def __init__(self, job):
        self.job = job
        self.me = os.getpid()
        self.out = []
        self.control = b""
        self.stdin_open = True
        self.exiting = False
        self.exit_deadline = None
        self.commands = {}
        self.attempt = None
        self.pending_attempts = []
        self.lease = None
        self.ticket = None
        self.lease_args = None
        self.waiting = None
        self.next_wait = 0.0
        #: Warm interpreters by process name (launcher/hostside/warm.py), each with its warm spec.
        self.zygotes = {}
        self.cold = []  # (process, why) of the attempt being started that could not start warm
        self.last_doc = None

    # -- output

    def emit(self, kind, **fields):
        self.out.append(b"! " + json.dumps(dict(fields, event=kind)).encode("utf-8") + b"\n")

    def flush(self):
        if not self.out:
            return
        data = b"".join(self.out)
        del self.out[:]  # the attempt's process set appends to this same list
        try:
            procs.write_all(1, data)
        except OSError:
            pass  # the launcher is gone; stdin EOF follows

    # -- operations

    def read_control(self):
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.begin_exit()
            return
        self.control += data
        while b"\n" in self.control:
            line, self.control = self.control.split(b"\n", 1)
            if line.strip():
                self.handle(line)

    def handle(self, line):
        try:
            op = json.loads(line.decode("utf-8"))
            name = op["op"]
        except (ValueError, KeyError, TypeError) as exc:
            self.emit("note", message=f"unreadable operation: {exc}")
            return
        handler = getattr(self, "op_" + str(name), None)
        if handler is None:
            self.emit("note", message=f"unknown operation {name!r}")
            return
        try:
            handler(op)
        except Exception as exc:  # an operation's failure is answered, never the agent's end
            self.emit("failed", id=op.get("id"), op=name, message=f"{type(exc).__name__}: {exc}")

    def op_run(self, op):
        try:
            command = Command(op, self.me)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.emit("result", id=op.get("id"), rc=127, out="",
                      err="cannot start {}: {}".format(op.get("argv", ["?"])[0], exc), timed_out=False)
            return
        self.commands[command.pid] = command

    def _state(self, op):
        from launcher.hostside import hoststate

        request = hoststate.Request.from_json(op["request"])
        return hoststate, op["state_dir"], request

    def op_ticket(self, op):
        hoststate, state_dir, request = self._state(op)
        try:
            if self.ticket is None:
                self.ticket = hoststate.register(state_dir, request)
            self.lease_args = (state_dir, request)
            self.emit("ticket", id=op.get("id"), ok=True, key=self.ticket.key)
        except hoststate.HostStateError as exc:
            self.emit("ticket", id=op.get("id"), ok=False, error=exc.to_json())

    def op_lease(self, op):
        hoststate, state_dir, request = self._state(op)
        self.lease_args = (state_dir, request)
        if self.lease is not None:
            self.emit("lease", id=op.get("id"), granted=True, report={"state": "granted", "reason": "held"})
            return
        allow_cordoned = op["request"].get("allow_cordoned") is True
        try:
            self.lease = hoststate.try_acquire(state_dir, request, ticket=self.ticket,
                                               allow_cordoned=allow_cordoned)
            self.emit("lease", id=op.get("id"), granted=True,
                      report={"state": "granted", "reason": "granted"}, record=self.lease.record)
        except hoststate.Refused as refused:
            self.emit("lease", id=op.get("id"), granted=False, report=refused.report)
        except hoststate.HostStateError as exc:
            self.emit("lease", id=op.get("id"), granted=False, error=exc.to_json())

    def op_wait(self, op):
        if self.lease_args is None:
            self.emit("lease_wait", id=op.get("id"), granted=False, error={"message": "nothing to wait for"})
            return
        self.waiting = {"id": op.get("id"), "last": None}
        self.next_wait = 0.0

    def poll_wait(self):
        """While waiting: look at the queue; report a change of place, holders or waiters, or the grant."""
        if self.waiting is None or time.monotonic() < self.next_wait:
            return
        self.next_wait = time.monotonic() + WAIT_POLL_S
        from launcher.hostside import hoststate

        state_dir, request = self.lease_args
        if self.ticket is not None:
            request = hoststate.Request.from_json(dict(request.to_json(), key=self.ticket.key))
        try:
            report = hoststate.check(state_dir, request)
        except hoststate.HostStateError as exc:
            self.emit("lease_wait", id=self.waiting["id"], granted=False, error=exc.to_json())
            self.waiting = None
            return
        signature = (report["state"], report["place"],
                     tuple((h["job"], h["uid"]) for h in report["holders"]),
                     tuple((t["job"], t["uid"]) for t in report["waiting_for"]))
        if report["granted"] or report["state"] == "cordoned":
            self.emit("lease_wait", id=self.waiting["id"], granted=report["granted"], report=report)
            self.waiting = None
        elif signature != self.waiting["last"]:
            self.waiting["last"] = signature
            self.emit("lease_wait", id=self.waiting["id"], granted=False, report=report, changed=True)

    def op_release(self, op):
        what = op.get("what", "all")
        if what in ("lease", "all") and self.lease is not None:
            self.lease.release()
            self.lease = None
        if what in ("ticket", "all") and self.ticket is not None:
            self.ticket.release()
            self.ticket = None
        if what in ("ticket", "all"):
            self.waiting = None
        self.emit("released", id=op.get("id"), what=what)

    def op_state(self, op):
        """A command of the host's shared state (hoststate.COMMANDS: snapshot, record-exclusion, ...)."""
        from launcher.hostside import hoststate

        command = hoststate.COMMANDS.get(op.get("command"))
        try:
            if command is None:
                raise hoststate.RequestError("command", hoststate.USAGE)
            self.emit("state", id=op.get("id"), result=command(op["state_dir"], op.get("payload") or {}))
        except hoststate.HostStateError as exc:
            self.emit("state", id=op.get("id"), error=exc.to_json())

    def op_attempt(self, op):
        doc = op["doc"]
        if self.attempt is not None and not self.attempt.ended:
            self.pending_attempts.append(doc)
            return
        self.start_attempt(doc)

    def start_attempt(self, doc):
        keep = [self.lease.fd] if self.lease is not None and self.lease.fd is not None else []
        self.last_doc = doc
        self.cold = []
        self.attempt = ProcSet(doc, self.out, keep_fds=keep, others=self.other_children, warm=self.take_warm)
        self.attempt.start_all()
        self.drop_zygotes()
        if self.cold:
            names = [name for name, _ in self.cold]
            self.emit("note", message="{} started cold, without a warm interpreter: {}".format(
                ", ".join(names), self.cold[0][1]))

    def other_children(self):
        return list(self.commands) + [z.pid for z, _ in self.zygotes.values()]

    # -- warm interpreters

    def op_warm(self, op):
        """Start a warm interpreter for every process of the last attempt (or of `processes`, the last
        attempt's entries as the launcher kept them: an agent started after its host's agent was lost has
        run none) that can have one, so that the next attempt's processes skip their imports (their output
        pipes are made now)."""
        from launcher.hostside import warm

        started = []
        for spec in op.get("processes") or (self.last_doc or {}).get("processes", ()):
            plan = spec.get("warm")
            if not plan or spec["name"] in self.zygotes:
                continue
            try:
                zygote = warm.Zygote.start(
                    spec["name"], plan["python"], plan["modules"], main=plan.get("main"),
                    env=process_environment(os.environ, plan.get("start_env")), cwd=spec.get("cwd") or None,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    preexec_fn=procs.dies_with_parent(self.me))
            except warm.ZygoteError as exc:
                self.emit("note", message="no warm interpreter for {}: {}".format(spec["name"], exc))
                continue
            self.zygotes[spec["name"]] = (zygote, plan)
            started.append(spec["name"])
        self.emit("warming", names=started)

    def take_warm(self, name, spec):
        """The running process of `name`'s warm interpreter given `spec`'s command, or None (start cold)."""
        from launcher.hostside import warm

        held = self.zygotes.pop(name, None)
        if held is None:
            return None
        zygote, plan = held
        wanted = spec.get("warm") or {}
        if plan.get("start_env") != wanted.get("start_env") or plan.get("modules") != wanted.get("modules"):
            self.end_zygote(zygote)
            return None
        env = process_environment(os.environ, spec.get("env"))
        try:
            zygote.wait_ready(WARM_READY_S)
            zygote.hand(wanted["argv"], env, spec.get("cwd") or None, timeout=WARM_READY_S)
        except warm.ZygoteError as exc:
            self.cold.append((name, str(exc)))
            self.end_zygote(zygote)
            return None
        return zygote.popen

    def end_zygote(self, zygote):
        zygote.close()
        try:
            os.killpg(zygote.pid, signal.SIGKILL)
        except OSError:
            pass
        for stream in (zygote.popen.stdout, zygote.popen.stderr):
            if stream is not None:
                stream.close()

    def drop_zygotes(self):
        """Warm interpreters of processes the attempt did not take are not kept."""
        for zygote, _ in self.zygotes.values():
            self.end_zygote(zygote)
        self.zygotes = {}

    def op_stop(self, op):
        if self.attempt is not None and not self.attempt.ended:
            self.attempt.begin_stop(int(op.get("sig", signal.SIGTERM)))

    def op_signal(self, op):
        if self.attempt is not None and not self.attempt.ended:
            self.attempt.signal_groups(int(op["sig"]))

    def op_save(self, op):
        path = op["path"]
        try:
            files.write_atomic(path, [b"save\n"], 0o644)
            self.emit("saving", path=path)
        except OSError as exc:
            self.emit("saving", path=path, error=str(exc))

    def op_stacks(self, op):
        from launcher.hostside import stacks

        records = stacks.capture([int(p) for p in op.get("pids", ())], float(op.get("timeout", 10.0)))
        self.emit("stacks", id=op.get("id"), records=records)

    def op_exit(self, op):
        self.begin_exit()

    # -- children

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            command = self.commands.get(pid)
            if command is not None:
                command.status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                continue
            if self.attempt is not None:
                self.attempt.exited(pid, status)

    def finish_commands(self):
        for pid, command in list(self.commands.items()):
            command.expire()
            if command.finished:
                del self.commands[pid]
                self.emit("result", **command.result())

    # -- the end

    def begin_exit(self):
        if self.exiting:
            return
        self.exiting = True
        self.exit_deadline = time.monotonic() + EXIT_WAIT_S
        self.pending_attempts = []
        self.waiting = None
        self.drop_zygotes()
        if self.attempt is not None and not self.attempt.ended:
            self.attempt.begin_stop(signal.SIGTERM)
        for command in self.commands.values():
            try:
                os.killpg(command.pid, signal.SIGKILL)
            except OSError:
                pass

    def done(self):
        if not self.exiting:
            return False
        attempt_over = self.attempt is None or self.attempt.ended
        return (attempt_over and not self.commands) or time.monotonic() >= self.exit_deadline

    # -- loop

    def run(self):
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), lambda s, f: self.begin_exit())
        os.set_blocking(0, False)
        self.emit("hello", pid=self.me, t=now())
        self.flush()
        for line in self.control.split(b"\n")[:-1]:
            if line.strip():
                self.handle(line)
        self.control = self.control.rsplit(b"\n", 1)[-1] if b"\n" in self.control else self.control
        while True:
            attempt_fds = self.attempt.fds() if self.attempt is not None else []
            command_fds = {fd: c for c in self.commands.values() for fd in c.fds}
            watched = attempt_fds + list(command_fds) + [wake_r] + ([0] if self.stdin_open else [])
            timeout = self.attempt.timeout() if self.attempt is not None and not self.attempt.ended else 1.0
            if self.commands or self.waiting is not None or self.exiting:
                timeout = min(timeout, 0.05 if self.exiting else WAIT_POLL_S)
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
                elif fd in command_fds:
                    command_fds[fd].read(fd)
                elif self.attempt is not None and fd in self.attempt.by_fd:
                    self.attempt.read_fd(fd)
            self.reap()
            self.finish_commands()
            if self.attempt is not None and not self.attempt.ended:
                self.attempt.tick()
            if (self.attempt is None or self.attempt.ended) and self.pending_attempts:
                self.start_attempt(self.pending_attempts.pop(0))
            self.poll_wait()
            if self.done():
                self.release_all()
                self.emit("bye", t=now())
                self.flush()
                procs.drain()
                return 0
            self.flush()

    def release_all(self):
        for held in (self.lease, self.ticket):
            if held is not None:
                try:
                    held.release()
                except Exception:  # the state directory may be gone; the lock goes with this process
                    pass
        self.lease = self.ticket = None


def agent_mode(args):
    """`agent`: the host agent of the job document that follows on stdin; 0 once everything is gone."""
    if args:
        os.write(2, b"usage: agent  (job document on stdin)\n")
        return 2
    procs.become_subreaper()
    job, rest = procs.read_json_line(0, "refinenet-agent: the job document")
    agent = Agent(job)
    agent.control = rest
    return agent.run()
