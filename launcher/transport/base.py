"""One interface for running commands and moving files on a host, local or over SSH.

Every OS effect of the launcher on a host goes through a `Transport`, so backends, the
supervisor and the job commands never care where a host is, and tests can script them.
"""
from __future__ import annotations

import abc
import signal
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Tuple

LineCallback = Callable[[str], None]


class HostError(Exception):
    """A host could not be reached, authenticated or used; carries the host and the cause."""

    def __init__(self, host: str, cause: str):
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a short command run to completion with `Transport.exec`."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class HostInfo:
    """What `Transport.probe` learned about a host."""

    host: str
    hostname: str
    python: str
    python_version: str
    facts: Mapping[str, str] = field(default_factory=dict)


class RemoteProcess(abc.ABC):
    """A long-running command started by `Transport.run`, in its own process group under a guard.

    The guard kills the group when the launcher's side of the connection goes away, so a dead
    launcher leaves nothing behind. `pid`/`pgid` are the host-side ids of the command itself.
    """

    host: str
    pid: int
    pgid: int

    @abc.abstractmethod
    def poll(self) -> Optional[int]:
        """Exit status if finished (negative signal number when killed by a signal), else None."""

    @abc.abstractmethod
    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait up to `timeout` seconds; the exit status, or None if still running."""

    @abc.abstractmethod
    def kill_group(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the command's whole process group on its host."""

    def terminate(self, grace: float = 5.0) -> Optional[int]:
        """SIGTERM the group, wait `grace` seconds, then SIGKILL it; returns the exit status."""
        if self.poll() is not None:
            return self.poll()
        self.kill_group(signal.SIGTERM)
        code = self.wait(grace)
        if code is None:
            self.kill_group(signal.SIGKILL)
            code = self.wait(grace)
        return code


class Transport(abc.ABC):
    """Run commands and move files on one host.

    `env` is always laid over the host's own environment (the launcher's for the local host, the
    login environment for SSH hosts). Exit statuses are the exit code, or minus the signal number
    when a signal killed the command.
    """

    host: str

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
            cwd: Optional[str] = None, on_line: Optional[LineCallback] = None) -> RemoteProcess:
        """Start `argv` in its own session; `on_line` receives each whole stdout/stderr line."""

    def start_agent(self, argv: Sequence[str], stdin: bytes):
        """Start a host agent (`launcher.agent`): `argv` with `stdin` written to it first; returns an
        `AgentStream` carrying the agent's stdout and stderr as one stream. `HostError` on failure."""
        raise HostError(self.host, f"{type(self).__name__} cannot start a host agent")

    @abc.abstractmethod
    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        """Run a short command to completion and collect its output."""

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes:
        """Contents of `path` on the host; `FileNotFoundError` if it does not exist."""

    @abc.abstractmethod
    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write `path` on the host atomically, creating parent folders."""

    @abc.abstractmethod
    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        """Signal a process group on the host by id; False if it no longer exists.

        With `verify_env=(NAME, VALUE)` only a group holding a process with exactly NAME=VALUE in
        its environment is signalled (False otherwise), so a reused group id is never touched.
        """

    @abc.abstractmethod
    def probe(self, python: str = "python3") -> HostInfo:
        """Check the host answers and `python` runs there; raises `HostError` otherwise."""

    def close(self) -> None:  # noqa: B027
        """Release the connection; commands still running there are hung up and their groups killed."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
