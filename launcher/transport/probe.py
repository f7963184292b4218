"""Questions asked of a host's python: who are you, and which port is free there.

Each question is a constant script run as `python -c SCRIPT ARG...`; user values travel as
arguments, never inside the code. Every answer is one JSON line on stdout.
"""
from __future__ import annotations

import json
from typing import Any, Dict

from launcher.transport.base import CommandResult, HostError, HostInfo

PROBE_SCRIPT = """\
import json, os, platform, socket, sys
print(json.dumps({"hostname": socket.gethostname(), "python": sys.executable,
                  "version": platform.python_version(), "platform": platform.platform(),
                  "machine": platform.machine(), "cpus": str(os.cpu_count())}))
"""


PORT_SCRIPT = """\
import socket
s = socket.socket()
s.bind(("", 0))
print(s.getsockname()[1])
"""


def probe_argv(python: str) -> list:
    return [python, "-c", PROBE_SCRIPT]


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


def free_port_on(transport, python: str) -> int:
    """A TCP port free on the transport's host now (for `master.port: auto` on a remote master)."""
    result = transport.exec([python, "-c", PORT_SCRIPT])
    if not result.ok or not result.stdout.strip().isdigit():
        raise HostError(transport.host, f"cannot find a free port there: {result.stderr.strip()[-200:]}")
    return int(result.stdout.strip())
