"""A warm interpreter for one rank slot: the workload's imports done ahead, then one command run.

A restarted attempt's ranks otherwise spend their first seconds importing MindSpore and the
workload again. The host's agent keeps one of these per rank slot, started while the job runs;
at a restart it hands each the rank's command instead of starting a new interpreter.

Zygote side (`python -c SOURCE [--main MODULE] MODULE...`, or `command()`'s short form that reads
SOURCE from stdin first; Python 3.6+, site-packages enabled).
Stdin is the control channel, one end of a Unix socketpair whose other end the agent holds; stdout
and stderr are the pipes the rank's output will go through. It imports each MODULE, reports
`ready`, waits for ONE request, checks it, makes its environment, working directory and `sys.argv`
what `python ARGV...` started with that environment would have, and runs the command as
`__main__` (runpy): its exit status is the command's, its stdin /dev/null, as the agent's ranks.
`--main MODULE`: the imports run as they would under `python -m MODULE` (`sys.argv[0]` the
module's file, `sys.path[0]` the working directory; MindSpore records `sys.argv[0]` at import as
the entry script its compile cache hashes, so a warm rank hits the graphs a cold one cached), and
only `-m MODULE` is accepted. Without it the imports see `sys.argv[0] == ""` (under `-c` MindSpore's
cache would fail on the missing file "-c").

Control channel, JSON lines::

    zygote -> agent  {"event": "ready", "pid", "seconds", "modules": {name: s}, "import_env": [names]}
                     {"event": "failed", "message"}          an import failed; exit 1
    agent -> zygote  {"argv": ["-m", MODULE, ARG...] or [SCRIPT, ARG...], "env": {...}, "cwd": DIR}
    zygote -> agent  {"event": "running", "pid"}             the command runs now; channel closed
                     {"event": "refused", "message", "variables"}   nothing ran; exit 2

EOF before a request (the agent is gone or no longer needs the slot): exit 0.

Environment rule. What a module reads from the environment while it is imported is fixed in the
zygote before the request comes, so such variables belong to the zygote's start (job-wide or
slot-constant values: GLOG_v, ONEDNN_MAX_CPU_ISA, OMP_*, DEVICE_ID, PYTHON*...); per-rank and
per-attempt values (MS_ROLE, MS_NODE_ID, MS_SCHED_*, LOCAL_RANK, REFINENET_RESUME, ...) go in the
request. Import-time variables are the ones the imports read through `os.environ` (traced while
they run) and the names and prefixes of `IMPORT_TIME_NAMES`/`IMPORT_TIME_PREFIXES` that native
libraries read as they load. A request whose environment differs from the start's in any of them
is refused, naming them. Variables the imports set or removed themselves are applied again on top
of the request's environment, as the same imports would have done in a fresh process.

Agent side: `command()` builds the zygote's command line, `Zygote` starts one and talks to it
(an agent without the launcher installed runs this file's source, which it got as `program`, to
get them).
"""
import importlib
import importlib.util
import json
import os
import runpy
import select
import socket
import subprocess
import sys
import time
import traceback

#: Variables read when the interpreter starts or native libraries load (a getenv trace while importing
#: mindspore and refinenet: benchmarks/import_env.py, docs/performance.md "Failure recovery").
IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "LC_", "GLOG_", "GOOGLE_", "VLOG_", "OMP_", "GOMP_", "KMP_", "MKL_",
                        "OPENBLAS_", "GOTO", "GFORTRAN_", "ONEDNN_", "DNNL_", "INTEL_", "OPENCV_", "NPY_",
                        "NUMPY_", "OPENSSL_", "ACC_", "GRPC_")
IMPORT_TIME_NAMES = ("LANG", "LANGUAGE", "MS_SUBMODULE_LOG_v", "DEVICE_ID", "MS_DEV_LAUNCH_BLOCKING",
                     "MS_DEV_DISABLE_AUTO_H2D", "MS_SIMULATION_LEVEL", "MS_CACHE_HOST", "MS_CACHE_PORT",
                     "CUDA_HOME")
EXIT_REFUSED = 2
MAX_REQUEST = 16 << 20


class ZygoteError(Exception):
    """A zygote failed to start, to import, or to take its request (`name` is the agent's label)."""

    def __init__(self, name, message, pid=None):
        where = "" if pid is None else f" (pid {pid})"
        super().__init__(f"warm interpreter {name}{where}: {message}")
        self.name = name
        self.pid = pid


class ZygoteRefused(ZygoteError):
    """The zygote refused the request (`variables`: the import-time variables it would change)."""

    def __init__(self, name, message, pid=None, variables=()):
        super().__init__(name, message, pid)
        self.variables = list(variables)


class Refused(Exception):
    """A request this zygote cannot run as a fresh interpreter would."""

    def __init__(self, message, variables=()):
        super().__init__(message)
        self.variables = list(variables)


def import_time_name(name):
    """True when native code or the interpreter reads `name` as it starts or loads."""
    return name in IMPORT_TIME_NAMES or name.startswith(IMPORT_TIME_PREFIXES)


def changed_import_env(start, request, traced):
    """Import-time variables whose value (or presence) differs between two environments."""
    names = set(traced)
    names.update(n for n in set(start) | set(request) if import_time_name(n))
    return sorted(n for n in names if start.get(n) != request.get(n))


def environment_for(request_env, start_env, imported_env):
    """The request's environment plus what the imports set or removed in the zygote's own."""
    env = dict(request_env)
    for name, value in imported_env.items():
        if start_env.get(name) != value:
            env[name] = value
    for name in start_env:
        if name not in imported_env:
            env.pop(name, None)
    return env


# -- the zygote


class Channel:
    """JSON lines over the control socket (file descriptor `fd`)."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""

    def send(self, **event):
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            return False
        return True

    def receive(self, timeout=None):
        """The next message, or None at EOF; `TimeoutError` when none comes within `timeout` s (0: only
        what has arrived, for a caller whose own select found the descriptor readable)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                raise Refused(f"request longer than {MAX_REQUEST} bytes")
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError()
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line.decode("utf-8"))
        except ValueError as exc:
            raise Refused(f"request is not JSON: {exc}") from None

    def detach(self):
        """Put /dev/null where the channel was: the command reads stdin as any rank does."""
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, self.fd)
        os.close(devnull)


def _tracing(base, names):
    class TracingEnviron(base):
        def __getitem__(self, key):
            names.add(key.decode() if isinstance(key, bytes) else str(key))
            return base.__getitem__(self, key)

        def __contains__(self, key):
            names.add(key.decode() if isinstance(key, bytes) else str(key))
            return base.__contains__(self, key)

    return TracingEnviron


def main_spec(module):
    """The spec `python -m module` runs (a package runs its __main__)."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(module + ".__main__")
    if spec is None or not spec.origin:
        raise ImportError(f"No module named {module}")
    return spec


def preload(modules, main, path_prepended):
    """Import `modules` (as `python -m main` would see it), tracing the environment they read.

    Returns ({module: seconds}, names read)."""
    traced = set()
    base = os.environ.__class__
    os.environ.__class__ = _tracing(base, traced)
    timings = {}
    try:
        if main:
            sys.argv[:] = [main_spec(main).origin]
            if path_prepended:
                sys.path[0] = os.getcwd() if sys.version_info >= (3, 7) else ""
        else:
            sys.argv[:] = [""]  # the command is not known yet: no script, as in an interactive interpreter
        for name in modules:
            t0 = time.monotonic()
            importlib.import_module(name)
            timings[name] = round(time.monotonic() - t0, 3)
    finally:
        os.environ.__class__ = base
    return timings, traced


def parse_request(request, main):
    """(module or None, script or None, args, env, cwd) of a request; `Refused` when malformed."""
    if not isinstance(request, dict):
        raise Refused("the request is not a JSON object")
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise Refused("argv: a non-empty list of strings is needed")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise Refused("env: an object of strings is needed")
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
        raise Refused(f"cwd: {cwd!r} is not a directory")
    module = script = None
    if argv[0] == "-m":
        if len(argv) < 2:
            raise Refused("argv: -m needs a module")
        module, args = argv[1], argv[2:]
    elif argv[0].startswith("-"):
        raise Refused(f"argv: {argv[0]!r}: only `-m MODULE ARGS` or `SCRIPT ARGS` run warm")
    else:
        script, args = argv[0], argv[1:]
    if main and module != main:
        raise Refused(f"argv: this interpreter imported as `-m {main}`; it runs that module only")
    return module, script, args, env, cwd


def run(module, script, args, path_prepended):
    """Run the command as `__main__`, as `python -m module args` or `python script args` would."""
    if module is not None:
        if path_prepended and sys.version_info >= (3, 7):
            sys.path[0] = os.getcwd()
        sys.argv[:] = ["-m"] + list(args)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        if path_prepended:
            sys.path[0] = os.path.dirname(os.path.realpath(script))
        sys.argv[:] = [script] + list(args)
        runpy.run_path(script, run_name="__main__")


def zygote(args):
    """The zygote's life: preload, ready, one request, become the command. Returns an exit code."""
    main = None
    if args[:1] == ["--main"]:
        if len(args) < 2:
            sys.stderr.write("usage: python -c SOURCE [--main MODULE] MODULE...\n")
            return EXIT_REFUSED
        main, args = args[1], args[2:]
    channel = Channel(0)
    start_env = dict(os.environ)
    path_prepended = bool(sys.path) and sys.path[0] == ""
    t0 = time.monotonic()
    try:
        timings, traced = preload(args, main, path_prepended)
    except BaseException:  # noqa: B036 - anything an import raises, SystemExit included, is a failed start
        channel.send(event="failed", message=traceback.format_exc(limit=-8))
        return 1
    imported_env = dict(os.environ)
    ready = dict(pid=os.getpid(), seconds=round(time.monotonic() - t0, 3), modules=timings,
                 import_env=sorted(traced))
    if not channel.send(event="ready", **ready):
        return 0
    try:
        request = channel.receive()
        if request is None:
            return 0
        module, script, cmd_args, env, cwd = parse_request(request, main)
        changed = changed_import_env(start_env, env, traced)
        if changed:
            raise Refused("the request changes variables read at import: " + ", ".join(changed), changed)
    except Refused as exc:
        channel.send(event="refused", message=str(exc), variables=exc.variables)
        return EXIT_REFUSED
    new_env = environment_for(env, start_env, imported_env)
    os.environ.clear()
    os.environ.update(new_env)
    if cwd:
        os.chdir(cwd)
    channel.send(event="running", pid=os.getpid())
    channel.detach()
    run(module, script, cmd_args, path_prepended)
    return 0


# -- the agent's side


#: A `python -c` program that reads the zygote's source from stdin (its length is the last argument)
#: and runs it as `__main__`: the host needs no copy of the launcher and `ps` shows a short line.
BOOTSTRAP = ("import os, sys\n"
             "n, s = int(sys.argv.pop()), b''\n"
             "while len(s) < n:\n"
             "    c = os.read(0, n - len(s))\n"
             "    if not c:\n"
             "        sys.exit(127)\n"
             "    s += c\n"
             "exec(compile(s, 'refinenet-warm', 'exec'))\n")


def source():
    """This file's source, as the zygote runs it (the host program's bundle gave it, else the file)."""
    given = globals().get("__source__")
    if given:
        return given
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        return f.read()


def command(python, modules, main=None, flags=(), size=0):
    """The zygote's command line, `python [FLAGS] -c BOOTSTRAP [--main MAIN] MODULE... SIZE`: its
    stdin must first carry the SIZE bytes of source (`python -c SOURCE [--main MAIN] MODULE...`
    without BOOTSTRAP and SIZE runs the same zygote)."""
    argv = [python] + list(flags) + ["-c", BOOTSTRAP]
    if main:
        argv += ["--main", main]
    return argv + list(modules) + [str(size)]


class Zygote:
    """The agent's handle on one warm interpreter: start it, wait until ready, hand it one command.

    `Zygote.start(...)` runs `command(...)` with a socketpair end as stdin, the given stdout and
    stderr (the rank's pipes), `env` (the job-wide start environment) and `cwd`, in a session of its
    own. `fileno()` is the control socket, for the agent's select loop.
    """

    def __init__(self, name, popen, control):
        self.name = name
        self.popen = popen
        self.control = control
        self.channel = Channel(control.fileno())
        self.ready = None

    @classmethod
    def start(cls, name, python, modules, main=None, env=None, cwd=None, stdout=None, stderr=None, flags=(),
              program=None, preexec_fn=None):
        """Start a zygote; `program` is this file's source (read from it when None); `preexec_fn` runs in
        the child before it execs (e.g. the host agent's parent-death signal)."""
        code = (program if program is not None else source()).encode("utf-8")
        ours, theirs = socket.socketpair()
        try:
            popen = subprocess.Popen(command(python, modules, main, flags, len(code)), stdin=theirs.fileno(),
                                     stdout=stdout, stderr=stderr, env=env, cwd=cwd, start_new_session=True,
                                     close_fds=True, preexec_fn=preexec_fn)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            ours.close()
            raise ZygoteError(name, f"cannot start {python}: {exc}") from None
        finally:
            theirs.close()
        try:
            ours.sendall(code)
        except OSError as exc:
            ours.close()
            raise ZygoteError(name, f"cannot send the program: {exc}", popen.pid) from None
        return cls(name, popen, ours)

    @property
    def pid(self):
        return self.popen.pid

    def fileno(self):
        return self.control.fileno()

    def _receive(self, timeout, waiting_for):
        try:
            message = self.channel.receive(timeout)
        except TimeoutError:
            raise ZygoteError(self.name, f"no {waiting_for} within {timeout} s", self.pid) from None
        except Refused as exc:
            raise ZygoteError(self.name, f"unreadable report: {exc}", self.pid) from None
        if message is None:
            code = self.popen.poll()
            raise ZygoteError(self.name, f"ended before {waiting_for} (exit status {code})", self.pid)
        return message

    def wait_ready(self, timeout=None):
        """The ready report ({pid, seconds, modules, import_env}); ZygoteError if the imports failed."""
        message = self._receive(timeout, "ready")
        if message.get("event") != "ready":
            raise ZygoteError(self.name, "imports failed:\n" + str(message.get("message", message)), self.pid)
        self.ready = message
        return message

    def hand(self, argv, env, cwd=None, timeout=None):
        """Give the zygote its command; returns the running report. ZygoteRefused: nothing ran, the
        zygote exits 2 and the rank must start cold."""
        data = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}, separators=(",", ":"))
        try:
            self.control.sendall(data.encode("utf-8") + b"\n")
        except OSError as exc:
            raise ZygoteError(self.name, f"cannot hand the request: {exc}", self.pid) from None
        try:
            message = self._receive(timeout, "running")
        finally:
            self.control.close()
        if message.get("event") == "refused":
            raise ZygoteRefused(self.name, message.get("message", ""), self.pid, message.get("variables", ()))
        if message.get("event") != "running":
            raise ZygoteError(self.name, f"unexpected report {message}", self.pid)
        return message

    def close(self):
        """Drop the control channel: an idle zygote exits 0; one that runs a command is unaffected."""
        self.control.close()


if __name__ == "__main__":
    sys.exit(zygote(sys.argv[1:]))
