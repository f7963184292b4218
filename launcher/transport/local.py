"""Commands and files on the machine the launcher runs on.

Each `run` starts the guard (`launcher.transport.guard`) with this interpreter; the guard puts the
command in its own session and holds a pipe from the launcher, so the command's whole process group
dies with the launcher, even when the launcher is SIGKILLed. `env` is laid over the launcher's own
environment.
"""
from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from launcher.transport import guard
from launcher.transport.base import CommandResult, HostError, HostInfo, Transport
from launcher.transport.guarded import (
    guard_argv,
    guard_header,
    guard_stdin,
    kill_outcome,
    new_nonce,
    split_exec_trailer,
    status_from_exit_code,
)
from launcher.transport.probe import parse_probe, probe_argv

DEFAULT_GRACE_S = 2.0


class LocalTransport(Transport):
    """This machine, as a host called `host`."""

    def __init__(self, host: str = "localhost", *, grace_s: float = DEFAULT_GRACE_S):
        self.host = host
        self.grace_s = grace_s
        self._streams: list = []
        self._lock = threading.Lock()

    def _agent_argv(self, argv: Sequence[str]) -> list:
        """The agent's command line here: this interpreter in place of the host's python."""
        return [sys.executable, *argv[1:]]

    def _guard_argv(self, mode: str) -> list:
        return guard_argv(sys.executable, mode)

    def start_agent(self, argv: Sequence[str], stdin: bytes) -> _PipeStream:
        argv = self._agent_argv(argv)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, bufsize=0, start_new_session=True)
        except OSError as exc:
            raise HostError(self.host, f"cannot start the host agent: {exc}") from exc
        stream = _PipeStream(proc)
        try:
            proc.stdin.write(stdin)
        except OSError as exc:
            stream.close()
            raise HostError(self.host, f"cannot start the host agent: {exc}") from exc
        with self._lock:
            self._streams = [s for s in self._streams if s.proc.poll() is None] + [stream]
        return stream

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        """Run under the guard's exec mode, as on SSH hosts: the command and everything it starts end
        with the launcher, and a timeout ends them too."""
        nonce = new_nonce()
        header = guard_header(argv, env, cwd, self.grace_s, nonce)
        proc = subprocess.Popen(self._guard_argv("exec"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            proc.stdin.write(guard_stdin(header))
            proc.stdin.flush()
            out, err, finished = _read_both(proc, time.monotonic() + timeout)
        finally:
            proc.stdin.close()
        code = proc.wait()
        if not finished:
            raise HostError(self.host, f"{argv[0]} did not finish within {timeout:g} s")
        err, status = split_exec_trailer(err, nonce)
        if status is None:
            status = status_from_exit_code(code)
        return CommandResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk)
                if not data:
                    return
                yield data

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644) -> int:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for data in chunks:
                    f.write(data)
                    written += len(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return written

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        return kill_outcome(self.host, pgid, guard.signal_group(int(pgid), int(sig), verify_env))

    def probe(self, python: str = "python3") -> HostInfo:
        return parse_probe(self.host, python, self.exec(probe_argv(python)))

    def close(self) -> None:
        """Hang up on every command still running: their guards take their process groups down."""
        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()


def _read_both(proc: subprocess.Popen, deadline: float) -> Tuple[bytes, bytes, bool]:
    """Stdout and stderr of `proc` until both close; False as third item when `deadline` passed first."""
    chunks = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()]), False
            for key, _ in sel.select(min(left, 1.0)):
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()]), True


class _PipeStream:
    """A local agent's pipes (see `launcher.agent.session.AgentStream`)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._out = proc.stdout.fileno()

    def read(self, n: int) -> bytes:
        return os.read(self._out, n)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def exit_code(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
