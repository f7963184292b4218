"""The launcher's side of the guard protocol (see `launcher.transport.guard`), shared by all transports:
the command line that starts a guard, what it reads on stdin, and the status trailer of `exec`.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError
from launcher.transport import guard

CHUNK = 1 << 16


def guard_source() -> str:
    """The guard module's source, to run as `python -c SOURCE MODE` where the launcher is not installed."""
    return _GUARD_SOURCE


_GUARD_SOURCE = Path(guard.__file__).read_text(encoding="utf-8")
_GUARD_BYTES = _GUARD_SOURCE.encode("utf-8")


def bootstrap(name: str) -> str:
    """A `python -c` program that reads a program's source from stdin (its length is the last
    argument) and runs it as `name`: the host needs no copy of the launcher, and `ps` there shows a
    short command line. Used for the guard and for the host agent."""
    return ("import os, sys\n"
            "n, s = int(sys.argv[-1]), b''\n"
            "while len(s) < n:\n"
            "    c = os.read(0, n - len(s))\n"
            "    if not c:\n"
            "        sys.exit(127)\n"
            "    s += c\n"
            f"exec(compile(s, {name!r}, 'exec'))\n")


BOOTSTRAP = bootstrap("refinenet-guard")


def guard_argv(python: str, mode: str) -> list:
    """The command that starts a guard in `mode` (`exec`); feed it `guard_stdin(...)`.

    `-S` skips site-packages (the guard needs only the standard library; saves start-up time).
    """
    return [python, "-S", "-c", BOOTSTRAP, mode, str(len(_GUARD_BYTES))]


def kill_argv(python: str, pgid: int, sig: int, verify_env: Optional[Tuple[str, str]] = None) -> list:
    """The guard's `kill` mode on a host (see `Transport.kill_group`)."""
    argv = [python, "-c", _GUARD_SOURCE, "kill", str(int(pgid)), str(int(sig))]
    if verify_env is not None:
        argv.append(f"{verify_env[0]}={verify_env[1]}")
    return argv


def kill_outcome(host: str, pgid: int, code: int, err: str = "") -> bool:
    """`Transport.kill_group`'s answer from the guard's kill-mode exit code: True if signalled, False if
    no such (tagged) group; `HostError` when not permitted or the guard failed."""
    if code == guard.NOT_PERMITTED:
        raise HostError(host, f"not permitted to signal process group {pgid}")
    if code not in (0, guard.NOT_FOUND):
        raise HostError(host, f"signalling process group {pgid} failed (exit {code}): {err.strip()}")
    return code == 0


def guard_stdin(header: bytes) -> bytes:
    """What a guard started with `guard_argv` reads first: its own source, then the command header."""
    return _GUARD_BYTES + header


def guard_header(argv: Sequence[str], env: Optional[Mapping[str, str]], cwd: Optional[str],
                 grace: float, nonce: str = "") -> bytes:
    """The JSON line that tells a guard what to run."""
    if not argv:
        raise ValueError("empty command")
    header = {"argv": [str(a) for a in argv], "env": {str(k): str(v) for k, v in (env or {}).items()},
              "cwd": None if cwd is None else str(cwd), "grace": float(grace), "nonce": nonce}
    return (json.dumps(header) + "\n").encode("utf-8")


def new_nonce() -> str:
    return "refinenet-guard-" + secrets.token_hex(8)


def split_exec_trailer(stderr: bytes, nonce: str) -> Tuple[bytes, Optional[int]]:
    """Separate the guard's status trailer (exec mode) from the command's own stderr."""
    marker = ("\n" + nonce + " ").encode("ascii")
    at = stderr.rfind(marker)
    if at < 0 or not stderr.endswith(b"\n"):
        return stderr, None
    try:
        status = int(stderr[at + len(marker):-1])
    except ValueError:
        return stderr, None
    return stderr[:at], status


def status_from_exit_code(code: Optional[int]) -> Optional[int]:
    """A guard's exit code back to a status: 128 + n means killed by signal n."""
    if code is None or code < 0:
        return code
    return -(code - 128) if 128 < code < 128 + 65 else code
