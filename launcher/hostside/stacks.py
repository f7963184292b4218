"""Every process's Python stack, taken from outside it (`py-spy dump`), with /proc as the fallback.

Runs on a host with the standard library only (Python 3.6+) and travels there as source, so the
host needs no copy of the launcher::

    python -S stacks.py [--timeout S] [--py-spy PATH] [--no-native] PID...
    python -S stacks.py < '{"pids": [PID, ...], "timeout_s": S, "py_spy": PATH}'   (or a JSON list)

prints one JSON list with a record per pid, in the order given. `capture` never raises: a process
whose stack cannot be taken gets a record that says why, with what /proc tells about it.

One record (`FORMAT`)::

    {"format", "pid", "status": "ok" | "no_py_spy" | "not_permitted" | "timeout" | "gone" | "failed",
     "reason": "" or why there is no stack, "time": epoch s when the capture began,
     "seconds": when its py-spy ended, from then,
     "tool": {"path", "json", "native", "nonblocking"} or null,
     "threads": [{"os_thread_id", "thread_id", "name", "main", "active", "owns_gil",
                  "frames": [{"function", "file", "module_file", "line", "native"}]}],
     "proc": {"state", "wchan", "syscall", "cmdline", "threads": [{"tid", "comm", "state", "wchan"}]}}

Frames are innermost first; the main thread comes first. `module_file` is the file relative to its
package root (the parent of the outermost folder holding an `__init__.py`, e.g.
`refinenet/data/pipeline.py`), worked out here, where the file is. With `native` (the default), C and
C++ frames are included (`native` true, line 0, the shared library as file): they name what a rank
waits for inside the framework, e.g. MindSpore's `CollectiveOpsImpl::AllReduce`. `proc.threads` is
filled only when there is no stack. py-spy is looked for next to this Python (`dirname(sys.executable)`,
a virtual environment's bin), then on PATH, unless a path is given; every pid is dumped at once, each
by its own py-spy, all within `timeout_s`.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

FORMAT = "refinenet-stacks/1"
DEFAULT_TIMEOUT_S = 10.0
POLL_S = 0.02
MAX_PROC_THREADS = 64
MAX_CMDLINE = 4096
MAX_REASON = 600

OK = "ok"
NO_PY_SPY = "no_py_spy"
NOT_PERMITTED = "not_permitted"
TIMEOUT = "timeout"
GONE = "gone"
FAILED = "failed"

STATES = {"R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "tracing stop",
          "Z": "zombie", "X": "dead", "I": "idle", "P": "parked", "W": "waking"}

# Blocking system calls by number (x86_64 and the generic table of aarch64): enough to say what a
# process without a Python stack is waiting in; others are shown by number.
SYSCALLS = {
    "x86_64": {0: "read", 1: "write", 7: "poll", 23: "select", 24: "sched_yield", 34: "pause",
               35: "nanosleep", 42: "connect", 43: "accept", 45: "recvfrom", 47: "recvmsg", 61: "wait4",
               202: "futex", 208: "io_getevents", 230: "clock_nanosleep", 232: "epoll_wait",
               247: "waitid", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4",
               441: "epoll_pwait2", 449: "futex_waitv"},
    "aarch64": {4: "io_getevents", 22: "epoll_pwait", 63: "read", 64: "write", 72: "pselect6",
                73: "ppoll", 95: "waitid", 98: "futex", 101: "nanosleep", 115: "clock_nanosleep",
                124: "sched_yield", 202: "accept", 203: "connect", 207: "recvfrom", 212: "recvmsg",
                242: "accept4", 260: "wait4", 441: "epoll_pwait2", 449: "futex_waitv"},
}

_TEXT_THREAD = re.compile(r'^Thread (\S+)(?: \(([^)]*)\))?(?::\s*"(.*)")?\s*$')
_TEXT_FRAME = re.compile(r"^\s+(.*?) \((.*?)(?::(\d+))?\)\s*$")
_PERMISSION = ("permission denied", "operation not permitted", "eperm", "elevated permissions")


def _read(path, limit=None):
    """A /proc file's text, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit) if limit else f.read()
    except OSError:
        return None
    return data.decode("utf-8", "replace")


def _executable(path):
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def find_py_spy(path=None):
    """(the py-spy to use or None, where it was looked for): `path` when given, else next to this
    Python, else on PATH."""
    if path:
        return (path if _executable(path) else None), [path]
    looked = []
    if sys.executable:
        here = os.path.join(os.path.dirname(sys.executable), "py-spy")
        looked.append(here)
        if _executable(here):
            return here, looked
    looked.append("PATH")
    return shutil.which("py-spy"), looked


def syscall_name(text):
    """/proc/PID/syscall's first field as a name: `futex`, `running`, `#nnn` when not in the table."""
    if text is None:
        return None
    fields = text.split()
    if not fields:
        return None
    if fields[0] == "running":
        return "running"
    try:
        number = int(fields[0])
    except ValueError:
        return fields[0]
    if number < 0:
        return "none (blocked outside a system call)"
    return SYSCALLS.get(platform.machine(), {}).get(number, f"#{number}")


def _state(status_text):
    for line in (status_text or "").splitlines():
        if line.startswith("State:"):
            return line.split(":", 1)[1].strip()
    return None


def _task_state(stat_text):
    """The state letter of /proc/PID/task/TID/stat (after the command name in parentheses)."""
    if not stat_text or ")" not in stat_text:
        return None
    rest = stat_text.rsplit(")", 1)[1].split()
    return f"{rest[0]} ({STATES.get(rest[0], '?')})" if rest else None


def _wchan(text):
    if text is None:
        return None
    text = text.strip()
    return text if text and text != "0" else ""


def proc_info(pid, threads=False):
    """What /proc says about `pid`: state, kernel wait channel, system call, command line, and with
    `threads` each thread's (up to MAX_PROC_THREADS). None when the process does not exist."""
    base = f"/proc/{pid}"
    status = _read(base + "/status")
    if status is None:
        return None
    cmdline = _read(base + "/cmdline", MAX_CMDLINE)
    syscall = _read(base + "/syscall")
    info = {"state": _state(status), "wchan": _wchan(_read(base + "/wchan")),
            "syscall": syscall_name(syscall) if syscall is not None else "unreadable (permission)",
            "cmdline": [a for a in cmdline.split("\0") if a] if cmdline else []}
    if threads:
        info["threads"] = _proc_threads(base)
    return info


def _proc_threads(base):
    try:
        tids = sorted(int(t) for t in os.listdir(base + "/task") if t.isdigit())
    except OSError:
        return []
    out = []
    for tid in tids[:MAX_PROC_THREADS]:
        task = f"{base}/task/{tid}"
        comm = _read(task + "/comm")
        out.append({"tid": tid, "comm": comm.strip() if comm else None,
                    "state": _task_state(_read(task + "/stat")), "wchan": _wchan(_read(task + "/wchan"))})
    return out


def _exists(pid):
    return os.path.isdir(f"/proc/{pid}")


class _Files:
    """Turns a frame's file into `module_file`, once per file."""

    def __init__(self, pid):
        self.cwd = None
        try:
            self.cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            pass
        self.cache = {}

    def module_file(self, path, native):
        if path not in self.cache:
            self.cache[path] = os.path.basename(path) if native else self._package_relative(path)
        return self.cache[path]

    def _package_relative(self, path):
        if not path or path.startswith("<"):
            return path
        full = path if os.path.isabs(path) or not self.cwd else os.path.join(self.cwd, path)
        folder, parts = os.path.dirname(full), [os.path.basename(full)]
        while folder and os.path.isfile(os.path.join(folder, "__init__.py")):
            parts.insert(0, os.path.basename(folder))
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        return "/".join(parts)


def _frame(function, path, line, native, files):
    return {"function": function, "file": path, "module_file": files.module_file(path, native),
            "line": line, "native": native}


def parse_json(text, pid):
    """py-spy's `dump --json` output -> threads (main first), frames innermost first."""
    files, threads = _Files(pid), []
    for t in json.loads(text):
        frames = []
        for f in t.get("frames") or ():
            native = f.get("module") is not None
            frames.append(_frame(str(f.get("name")), str(f.get("filename") or ""), int(f.get("line") or 0),
                                 native, files))
        threads.append({"os_thread_id": t.get("os_thread_id"), "thread_id": t.get("thread_id"),
                        "name": t.get("thread_name"), "active": t.get("active"),
                        "owns_gil": t.get("owns_gil"),
                        "main": t.get("os_thread_id") == pid or t.get("thread_name") == "MainThread",
                        "frames": frames})
    return _main_first(threads)


def parse_text(text, pid):
    """py-spy's plain `dump` output (versions without --json) -> the same threads as `parse_json`."""
    files, threads = _Files(pid), []
    for line in text.splitlines():
        head = _TEXT_THREAD.match(line)
        if head:
            ident, flags, name = head.group(1), head.group(2) or "", head.group(3)
            try:
                number = int(ident, 0)
            except ValueError:
                number = None
            os_tid = number if number is not None and not ident.lower().startswith("0x") else None
            threads.append({"os_thread_id": os_tid, "thread_id": number, "name": name,
                            "active": "active" in flags, "owns_gil": "gil" in flags,
                            "main": os_tid == pid or name == "MainThread", "frames": []})
            continue
        frame = _TEXT_FRAME.match(line)
        if frame and threads:
            function, path, number = frame.group(1), frame.group(2), frame.group(3)
            native = number is None and not path.endswith(".py")
            threads[-1]["frames"].append(_frame(function, path, int(number or 0), native, files))
    return _main_first(threads)


def _main_first(threads):
    return sorted(threads, key=lambda t: not t["main"])


def _clip(text):
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _why(stderr, code):
    """py-spy's error message: its stderr up to the stack backtrace Rust may add."""
    lines = []
    for line in stderr.splitlines():
        if line.strip().startswith("Stack backtrace"):
            break
        if line.strip():
            lines.append(line.strip())
    return _clip("; ".join(lines) or f"py-spy exited with {code}")


def _ptrace_hint():
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    where = f"kernel.yama.ptrace_scope={scope.strip()} here" if scope else "no Yama here"
    return ("ptrace not permitted: py-spy must run as the ranks' user with ptrace allowed "
            f"(CAP_SYS_PTRACE, or kernel.yama.ptrace_scope 0; {where})")


class _Dump:
    """One running `py-spy dump` for one pid, its output going to temporary files."""

    def __init__(self, record, tool, use_json, native, nonblocking=False):
        self.record, self.tool, self.use_json, self.native = record, tool, use_json, native
        self.nonblocking = nonblocking
        argv = [tool, "dump", "--pid", str(record["pid"]), "--full-filenames"]
        if use_json:
            argv.append("--json")
        if native:
            argv.append("--native")
        if nonblocking:
            argv.append("--nonblocking")
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        env = dict(os.environ, RUST_BACKTRACE="0")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                     env=env, close_fds=True)

    def done(self):
        return self.proc.poll() is not None

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self._close()

    def _close(self):
        self.out.close()
        self.err.close()

    def output(self):
        self.out.seek(0)
        self.err.seek(0)
        out = self.out.read().decode("utf-8", "replace")
        err = self.err.read().decode("utf-8", "replace")
        self._close()
        return self.proc.returncode, out, err


def _speaks_json(tool, timeout_s):
    """Whether this py-spy has `dump --json` (0.3.12 and later)."""
    try:
        proc = subprocess.run([tool, "dump", "--help"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=max(0.5, min(5.0, timeout_s)))
    except (OSError, subprocess.SubprocessError):
        return False
    return b"--json" in proc.stdout


def _record(pid, started):
    return {"format": FORMAT, "pid": pid, "status": None, "reason": "", "time": started, "seconds": 0.0,
            "tool": None, "threads": [], "proc": None}


def _fail(record, status, reason):
    """No stack: say why, with /proc's view of every thread (or that the process is gone)."""
    record["status"], record["reason"] = status, reason
    if status != GONE:
        info = proc_info(record["pid"], threads=True)
        if info is not None:
            record["proc"] = info
        else:
            record["status"], record["reason"] = GONE, f"the process exited during the capture ({reason})"


def _finish(dump, code, out, err):
    """Fill the record from a finished py-spy; True when it should be tried again the next way (without
    --native, then without suspending the process: a process stopped by SIGSTOP cannot be suspended)."""
    record = dump.record
    if code == 0:
        try:
            threads = (parse_json if dump.use_json else parse_text)(out, record["pid"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            _fail(record, FAILED, _clip(f"py-spy's output is unreadable: {exc}"))
            return False
        record["status"], record["threads"] = OK, threads
        return False
    if not _exists(record["pid"]):
        _fail(record, GONE, "the process exited before its stack was taken")
        return False
    if any(s in err.lower() for s in _PERMISSION):
        _fail(record, NOT_PERMITTED, f"{_ptrace_hint()}; py-spy said: {_why(err, code)}")
        return False
    if dump.native or not dump.nonblocking:
        return True
    _fail(record, FAILED, f"py-spy failed (exit {code}): {_why(err, code)}")
    return False


def capture(pids, timeout_s=DEFAULT_TIMEOUT_S, py_spy=None, native=True):
    """One JSON-serializable record per pid (see the module's docstring), all taken at once within
    `timeout_s`; never raises. A py-spy that fails with `native` is tried again without it, then with
    `--nonblocking` (the process is read while it runs)."""
    started, clock = time.time(), time.monotonic()
    deadline = clock + max(0.1, float(timeout_s))
    records, running = [], []
    for pid in pids:
        record = _record(pid, started)
        records.append(record)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            record["status"], record["reason"] = FAILED, f"not a process id: {pid!r}"
            continue
        record["proc"] = proc_info(pid)
        if record["proc"] is None:
            record["status"], record["reason"] = GONE, "no such process"
        elif (record["proc"]["state"] or "").startswith("Z"):
            record["status"], record["reason"] = GONE, "the process has exited (a zombie not yet reaped)"
    todo = [r for r in records if r["status"] is None]
    tool, looked = find_py_spy(py_spy)
    if todo and tool is None:
        where = " and ".join(looked)
        for record in todo:
            _fail(record, NO_PY_SPY, f"py-spy not found (looked: {where}); /proc only")
        todo = []
    use_json = bool(todo) and _speaks_json(tool, timeout_s)
    for record in todo:
        record["tool"] = {"path": tool, "json": use_json, "native": native, "nonblocking": False}
        try:
            running.append(_Dump(record, tool, use_json, native))
        except OSError as exc:
            _fail(record, FAILED, f"py-spy could not be started: {exc}")
    while running:
        for dump in [d for d in running if d.done()]:
            running.remove(dump)
            dump.record["seconds"] = round(time.monotonic() - clock, 3)
            if _finish(dump, *dump.output()) and time.monotonic() < deadline:
                nonblocking = not dump.native
                dump.record["tool"]["native"] = False
                dump.record["tool"]["nonblocking"] = nonblocking
                try:
                    running.append(_Dump(dump.record, tool, use_json, False, nonblocking))
                except OSError as exc:
                    _fail(dump.record, FAILED, f"py-spy could not be started: {exc}")
            elif dump.record["status"] is None:
                _fail(dump.record, FAILED, "py-spy failed and there was no time left to try again")
        if running and time.monotonic() >= deadline:
            for dump in running:
                dump.kill()
                dump.record["seconds"] = round(time.monotonic() - clock, 3)
                _fail(dump.record, TIMEOUT, f"py-spy did not answer within {float(timeout_s):.1f} s")
            running = []
        elif running:
            time.sleep(POLL_S)
    return records


def _request(args, stdin):
    """(pids, timeout_s, py_spy) from the command line, or from a JSON document on stdin."""
    pids, timeout_s, py_spy = list(args.pids), args.timeout, args.py_spy
    if not pids:
        doc = json.loads(stdin.read() or "[]")
        if isinstance(doc, dict):
            pids = doc.get("pids") or []
            timeout_s = float(doc.get("timeout_s", timeout_s))
            py_spy = doc.get("py_spy") or py_spy
        else:
            pids = doc
    if not isinstance(pids, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pids):
        raise ValueError(f"pids must be a list of integers, got {pids!r}")
    return pids, timeout_s, py_spy


def main(argv=None, stdin=None, stdout=None):
    parser = argparse.ArgumentParser(prog="stacks.py", description="Print the Python stack of every "
                                     "given process as JSON (py-spy, or /proc where it cannot).")
    parser.add_argument("pids", nargs="*", type=int, help="process ids (else a JSON list or "
                        '{"pids": [...], "timeout_s": S, "py_spy": PATH} on stdin)')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds for all of them")
    parser.add_argument("--py-spy", dest="py_spy", default=None, help="the py-spy executable to use")
    parser.add_argument("--no-native", dest="native", action="store_false", help="Python frames only")
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    try:
        pids, timeout_s, py_spy = _request(args, stdin or sys.stdin)
    except ValueError as exc:
        sys.stderr.write(f"stacks.py: bad input: {exc}\n")
        return 2
    stdout.write(json.dumps(capture(pids, timeout_s, py_spy, args.native)) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
