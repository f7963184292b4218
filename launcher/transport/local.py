"""Commands and files on the machine the launcher runs on.

Each `run` starts the guard (`launcher.transport.guard`) with this interpreter; the guard puts the
command in its own session and holds a pipe from the launcher, so the command's whole process group
dies with the launcher, even when the launcher is SIGKILLed. `env` is laid over the launcher's own
environment.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from launcher.transport import guard
from launcher.transport.base import CommandResult, HostError, HostInfo, LineCallback, Transport
from launcher.transport.guarded import GuardedProcess, guard_argv, guard_header, guard_stdin
from launcher.transport.probe import parse_probe, probe_argv

DEFAULT_GRACE_S = 2.0


class LocalTransport(Transport):
    """This machine, as a host called `host`."""

    def __init__(self, host: str = "localhost", *, grace_s: float = DEFAULT_GRACE_S):
        self.host = host
        self.grace_s = grace_s
        self._processes: list = []
        self._streams: list = []
        self._lock = threading.Lock()

    def run(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
            cwd: Optional[str] = None, on_line: Optional[LineCallback] = None) -> GuardedProcess:
        header = guard_header(argv, env, cwd, self.grace_s)
        guard_proc = subprocess.Popen(guard_argv(sys.executable, "run"), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                      start_new_session=True)
        out_fd, side_fd = guard_proc.stdout.fileno(), guard_proc.stderr.fileno()

        def write_control(data: bytes) -> None:
            guard_proc.stdin.write(data)

        def release() -> None:
            guard_proc.wait()
            guard_proc.stdin.close()
            guard_proc.stderr.close()

        process = GuardedProcess(
            self.host, read_out=lambda n: os.read(out_fd, n), read_side=lambda n: os.read(side_fd, n),
            write_control=write_control, hangup=guard_proc.stdin.close, guard_exit_code=guard_proc.wait,
            signal_group=self.kill_group, on_line=on_line, release=release, argv=argv)
        guard_proc.stdin.write(guard_stdin(header))
        with self._lock:
            self._processes = [p for p in self._processes if p.poll() is None] + [process]
        return process.start()

    def start_agent(self, argv: Sequence[str], stdin: bytes) -> _PipeStream:
        argv = [sys.executable, *argv[1:]]
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
        full_env = dict(os.environ, **{str(k): str(v) for k, v in (env or {}).items()})
        try:
            proc = subprocess.Popen([str(a) for a in argv], env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return CommandResult(guard.CANNOT_START, "", f"cannot start {argv[0]}: {exc}\n")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise HostError(self.host, f"{argv[0]} did not finish within {timeout:g} s") from None
        return CommandResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

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

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        code = guard.signal_group(int(pgid), int(sig), verify_env)
        if code == guard.NOT_PERMITTED:
            raise HostError(self.host, f"not permitted to signal process group {pgid}")
        return code == 0

    def probe(self, python: str = "python3") -> HostInfo:
        return parse_probe(self.host, python, self.exec(probe_argv(python)))

    def close(self) -> None:
        """Hang up on every command still running: their guards take their process groups down."""
        with self._lock:
            processes, self._processes = self._processes, []
            streams, self._streams = self._streams, []
        for process in processes:
            process.hangup()
        for stream in streams:
            stream.close()


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
