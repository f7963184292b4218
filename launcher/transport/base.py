"""One interface for running commands and moving files on a host, local or over SSH.

Every OS effect of the launcher on a host goes through a `Transport`, so backends, the
supervisor and the job commands never care where a host is, and tests can script them.
"""
from __future__ import annotations

import abc
import hashlib
import signal
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError

__all__ = ["HostError", "CommandResult", "HostInfo", "WriteResult", "SweepResult", "Transport"]


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
class WriteResult:
    """What a host reports of a file it wrote: the bytes and their sha256 (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class SweepResult:
    """What `Transport.sweep_job` did on a host: the processes it killed and those still alive,
    each as (pid, command name)."""

    host: str
    job_id: str
    killed: Tuple[Tuple[int, str], ...]
    left: Tuple[Tuple[int, str], ...]

    @property
    def clean(self) -> bool:
        return not self.left

    def describe(self) -> str:
        names = ", ".join(f"{name} ({pid})" for pid, name in self.killed[:8])
        more = f" and {len(self.killed) - 8} more" if len(self.killed) > 8 else ""
        text = (f"{self.host}: {len(self.killed)} process(es) of job {self.job_id} swept: {names}{more}"
                if self.killed else f"{self.host}: no process of job {self.job_id} left")
        if self.left:
            text += f"; still alive: {', '.join(f'{name} ({pid})' for pid, name in self.left)}"
        return text


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
    when a signal killed the command. Every command runs the host program (`launcher.hostside`,
    started as `launcher.transport.hostprog` says) in one of its modes.
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
        """Write `path` on the host atomically, creating parent folders; the host checks it received
        exactly `data` (size and sha256) before the file takes its name."""

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        """The contents of `path` in pieces, for files too large to hold at once."""
        yield self.read_file(path)

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644, *,
                     size: Optional[int] = None, sha256: Optional[str] = None) -> int:
        """Write `path` atomically from pieces; returns the bytes written. With `size` or `sha256` the
        host checks the bytes while writing them, and a mismatch (`HostError`) leaves `path` as it was."""
        data = b"".join(chunks)
        if (size is not None and len(data) != size) or (
                sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower()):
            raise HostError(self.host, f"{path} not written: the bytes differ from the ones expected")
        self.write_file(path, data, mode)
        return len(data)

    def program_command(self, mode: str, *args: str) -> Optional[List[str]]:
        """A command on this machine that runs the host program's `mode` on the host with plain pipes
        for stdin and stdout (write `hostprog.host_stdin()` to it first), for bulk data that should
        not pass through the launcher's Python; None where the transport has none."""
        return None

    def run_mode(self, mode: str, args: Sequence[str] = (), timeout: float = 60.0) -> Tuple[int, str, str]:
        """Run the host program's `mode` with `args` to its end, nothing more on its stdin:
        (exit code, stdout, stderr); `HostError` when it cannot run or does not finish in time."""
        raise HostError(self.host, f"{type(self).__name__} cannot run host program modes")

    @abc.abstractmethod
    def sweep_job(self, job_id: str, timeout_s: float = 5.0) -> SweepResult:
        """SIGKILL every process of the calling user on the host whose environment has
        REFINENET_JOB_ID=`job_id` (with their groups and descendants), and wait (at most `timeout_s`)
        until they are gone: what was killed and what is left."""

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
