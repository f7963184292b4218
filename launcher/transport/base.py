"""One interface for running commands and moving files on a host, local or over SSH.

Every OS effect of the launcher on a host goes through a `Transport`, so backends, the
supervisor and the job commands never care where a host is, and tests can script them.
"""
from __future__ import annotations

import abc
import signal
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError

__all__ = ["HostError", "CommandResult", "HostInfo", "Transport"]


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


class Transport(abc.ABC):
    """Run commands and move files on one host.

    `env` is always laid over the host's own environment (the launcher's for the local host, the
    login environment for SSH hosts). Exit statuses are the exit code, or minus the signal number
    when a signal killed the command.
    """

    host: str

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

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        """The contents of `path` in pieces, for files too large to hold at once."""
        yield self.read_file(path)

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644) -> int:
        """Write `path` atomically from pieces; returns the bytes written."""
        data = b"".join(chunks)
        self.write_file(path, data, mode)
        return len(data)

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
