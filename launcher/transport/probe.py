"""Preflight questions asked of a host's python: who are you, can you import these, can I write there.

Each question is a constant script run as `python -c SCRIPT ARG...`; user values travel as
arguments, never inside the code. Every answer is one JSON line on stdout.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Sequence

from launcher.transport.base import CommandResult, HostError, HostInfo

PROBE_SCRIPT = """\
import json, os, platform, socket, sys
print(json.dumps({"hostname": socket.gethostname(), "python": sys.executable,
                  "version": platform.python_version(), "platform": platform.platform(),
                  "machine": platform.machine(), "cpus": str(os.cpu_count())}))
"""

IMPORTS_SCRIPT = """\
import importlib.util, json, sys
missing = {}
for name in sys.argv[1:]:
    try:
        if importlib.util.find_spec(name) is None:
            missing[name] = "not found"
    except Exception as exc:
        missing[name] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(missing))
"""

WRITABLE_SCRIPT = """\
import json, os, sys, tempfile
directory = sys.argv[1]
try:
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=directory, prefix=".refinenet-write-check.")
    os.close(fd)
    os.unlink(path)
    print(json.dumps({"ok": True}))
except OSError as exc:
    print(json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, exc.strerror or exc)}))
"""


FACTS_SCRIPT = """\
import importlib.util, json, os, platform, socket, sys, tempfile
directory, nfiles = sys.argv[1], int(sys.argv[2])
files, modules = sys.argv[3:3 + nfiles], sys.argv[3 + nfiles:]
absent = [f for f in files if not os.path.exists(f)]
missing = {}
for name in modules:
    try:
        if importlib.util.find_spec(name) is None:
            missing[name] = "not found"
    except Exception as exc:
        missing[name] = "%s: %s" % (type(exc).__name__, exc)
writable = None
try:
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=directory, prefix=".refinenet-write-check.")
    os.close(fd)
    os.unlink(path)
except OSError as exc:
    writable = "%s: %s" % (type(exc).__name__, exc.strerror or exc)
print(json.dumps({"hostname": socket.gethostname(), "python": sys.executable,
                  "version": platform.python_version(), "platform": platform.platform(),
                  "machine": platform.machine(), "cpus": str(os.cpu_count()),
                  "missing": missing, "not_writable": writable, "absent": absent}))
"""

PORT_SCRIPT = """\
import socket
s = socket.socket()
s.bind(("", 0))
print(s.getsockname()[1])
"""


def probe_argv(python: str) -> list:
    return [python, "-c", PROBE_SCRIPT]


def imports_argv(python: str, modules: Sequence[str]) -> list:
    return [python, "-c", IMPORTS_SCRIPT, *modules]


def writable_argv(python: str, directory: str) -> list:
    return [python, "-c", WRITABLE_SCRIPT, directory]


def answer(host: str, python: str, result: CommandResult) -> Any:
    """The JSON answer of a script, or a `HostError` saying why python gave none."""
    if not result.ok:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        reason = detail[-1] if detail else f"exit code {result.returncode}"
        raise HostError(host, f"python {python!r} does not run: {reason}")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostError(host, f"python {python!r} gave no answer: {result.stdout.strip()[:200]!r}") from None


def parse_probe(host: str, python: str, result: CommandResult) -> HostInfo:
    facts: Dict[str, str] = answer(host, python, result)
    return HostInfo(host=host, hostname=facts.pop("hostname"), python=facts.pop("python"),
                    python_version=facts.pop("version"), facts=facts)


def facts_argv(python: str, directory: str, modules: Sequence[str], files: Sequence[str] = ()) -> list:
    return [python, "-c", FACTS_SCRIPT, directory, str(len(files)), *files, *modules]


def check_host(transport, python: str, directory: str, modules: Sequence[str] = (),
               files: Sequence[str] = ()) -> HostInfo:
    """One command: the host answers, `python` runs and imports `modules`, `directory` is writable,
    every one of `files` exists. `HostError` naming what is wrong; the host's facts otherwise."""
    host = transport.host
    argv = facts_argv(python, directory, modules, files)
    facts: Dict[str, Any] = answer(host, python, transport.exec(argv))
    absent = facts.pop("absent", []) or []
    if absent:
        raise HostError(host, f"input file(s) missing there: {', '.join(absent)}")
    missing = facts.pop("missing", {}) or {}
    if missing:
        listed = "; ".join(f"{name} ({why})" for name, why in sorted(missing.items()))
        raise HostError(host, f"python {python!r} cannot import: {listed}")
    problem = facts.pop("not_writable", None)
    if problem:
        raise HostError(host, f"cannot write in {directory}: {problem}")
    return HostInfo(host=host, hostname=facts.pop("hostname"), python=facts.pop("python"),
                    python_version=facts.pop("version"), facts=facts)


def check_python_imports(transport, python: str, modules: Sequence[str]) -> None:
    """Raise `HostError` naming each of `modules` that `python` on the host cannot find."""
    missing = answer(transport.host, python, transport.exec(imports_argv(python, modules)))
    if missing:
        listed = "; ".join(f"{name} ({why})" for name, why in sorted(missing.items()))
        raise HostError(transport.host, f"python {python!r} cannot import: {listed}")


def check_writable(transport, directory: str, python: str = "python3") -> None:
    """Create `directory` if needed and check a file can be written in it; `HostError` otherwise."""
    result = answer(transport.host, python, transport.exec(writable_argv(python, directory)))
    if not result.get("ok"):
        raise HostError(transport.host, f"cannot write in {directory}: {result.get('error')}")


def free_port_on(transport, python: str) -> int:
    """A TCP port free on the transport's host now (for `master.port: auto` on a remote master)."""
    result = transport.exec([python, "-c", PORT_SCRIPT])
    if not result.ok or not result.stdout.strip().isdigit():
        raise HostError(transport.host, f"cannot find a free port there: {result.stderr.strip()[-200:]}")
    return int(result.stdout.strip())
