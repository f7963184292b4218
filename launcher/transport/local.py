"""Commands and files on the machine the launcher runs on.

Every command runs the host program (`launcher.transport.hostprog`) with this interpreter, as on any
host: `exec` under the guard, which puts the command in its own session and holds a pipe from the
launcher, so the command's whole process group dies with the launcher, even when the launcher is
SIGKILLed; `kill` and `sweep` likewise. `env` is laid over the launcher's own environment. Files are
read and written in this process, with the host program's own atomic writer.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from launcher.hostside import files
from launcher.hostside.procs import write_all
from launcher.transport.base import CommandResult, HostError, HostInfo, SweepResult, Transport
from launcher.transport.hostprog import host_argv, host_stdin
from launcher.transport.modes import (
    exec_header,
    kill_args,
    kill_outcome,
    new_nonce,
    split_exec_trailer,
    status_from_exit_code,
    sweep_args,
    sweep_outcome,
)
from launcher.transport.probe import parse_probe, probe_argv

DEFAULT_GRACE_S = 2.0
#: Longest a `kill` (or the margin over a sweep's own timeout) may take before the host counts as stuck.
SHORT_TIMEOUT_S = 30.0


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

    def _command(self, mode: str, *args: str) -> List[str]:
        """The host program's `mode` here (a Slurm node wraps it in a step)."""
        return host_argv(sys.executable, mode, *args)

    def program_command(self, mode: str, *args: str) -> Optional[List[str]]:
        return self._command(mode, *args)

    def start_agent(self, argv: Sequence[str], stdin: bytes) -> _PipeStream:
        argv = self._agent_argv(argv)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, bufsize=0, start_new_session=True)
        except OSError as exc:
            raise HostError(self.host, f"cannot start the host agent: {exc}") from exc
        stream = _PipeStream(proc)
        try:
            stream.write(stdin)
        except BrokenPipeError:
            pass  # it ended before reading it all: what it printed says why
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
        header = exec_header(argv, env, cwd, self.grace_s, nonce)
        proc = subprocess.Popen(self._command("exec"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            proc.stdin.write(host_stdin(header))
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

    def _run(self, mode: str, args: Sequence[str], timeout: float = SHORT_TIMEOUT_S) -> Tuple[int, str, str]:
        """Run the host program's `mode` to its end: (exit code, stdout, stderr)."""
        try:
            done = subprocess.run(self._command(mode, *args), input=host_stdin(), capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HostError(self.host, f"{mode} did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise HostError(self.host, f"cannot run {mode}: {exc}") from None
        return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")

    def run_mode(self, mode: str, args: Sequence[str] = (), timeout: float = 60.0) -> Tuple[int, str, str]:
        return self._run(mode, args, timeout)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        files.write_atomic(path, [data], mode)

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        return files.read_chunks(path, chunk)

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644, *,
                     size: Optional[int] = None, sha256: Optional[str] = None) -> int:
        try:
            return files.write_atomic(path, chunks, mode, size, sha256)[0]
        except files.Mismatch as exc:
            raise HostError(self.host, f"{path} not written: {exc}") from None

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        code, _, err = self._run("kill", kill_args(pgid, sig, verify_env))
        return kill_outcome(self.host, pgid, code, err)

    def sweep_job(self, job_id: str, timeout_s: float = 5.0) -> SweepResult:
        code, out, err = self._run("sweep", sweep_args(job_id, timeout_s),
                                   timeout=timeout_s + SHORT_TIMEOUT_S)
        return sweep_outcome(self.host, job_id, code, out, err)

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
        # unbuffered: a pipe may take a large write in parts (a signal during it), so write the rest too
        write_all(self.proc.stdin.fileno(), data)

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
