"""Commands and files on a node of the Slurm allocation the launcher runs in, each as a job step.

Every command runs as `srun --jobid J --overlap -N1 -n1 -w NODE ... COMMAND`: srun carries stdin,
stdout and stderr between the launcher and the node, and its end (or the launcher's) ends the step.
The host agent gets the node's whole share of the allocation (`--whole`, no CPU binding) since it
starts every rank there; short commands (checks, scans, health samples) run under the guard as on
any host. Files are read and written on the node itself, so node-local disks work.
"""
from __future__ import annotations

import signal
import subprocess
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from launcher.slurm.text import parse_task_failures
from launcher.transport.base import CommandResult, HostError
from launcher.transport.guarded import guard_argv, guard_source, kill_argv, kill_outcome
from launcher.transport.local import DEFAULT_GRACE_S, LocalTransport

#: Options of the agent's step only: all of the node's CPUs (and devices) for the ranks it starts.
AGENT_STEP = ("--whole", "--cpu-bind=none")
FILE_TIMEOUT_S = 120.0

_WRITE = ("import os, sys, tempfile\n"
          "path, mode = sys.argv[1], int(sys.argv[2], 8)\n"
          "folder = os.path.dirname(path) or '.'\n"
          "os.makedirs(folder, exist_ok=True)\n"
          "fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')\n"
          "size, expected = 0, int(sys.argv[3])\n"
          "try:\n"
          "    with os.fdopen(fd, 'wb') as f:\n"
          "        while True:\n"
          "            b = sys.stdin.buffer.read(1 << 20)\n"
          "            if not b:\n"
          "                break\n"
          "            f.write(b)\n"
          "            size += len(b)\n"
          "        f.flush()\n"
          "        os.fsync(f.fileno())\n"
          "    if expected >= 0 and size != expected:\n"
          "        raise SystemExit(f'received {size} of {expected} bytes')\n"
          "    os.chmod(tmp, mode)\n"
          "    os.replace(tmp, path)\n"
          "except BaseException:\n"
          "    os.unlink(tmp)\n"
          "    raise\n"
          "print(size)\n")


class SlurmTransport(LocalTransport):
    """Node `host` of an allocation, reached with the srun options `srun` (launcher.slurm.allocation)."""

    def __init__(self, host: str, srun: Sequence[str], python: str, *, grace_s: float = DEFAULT_GRACE_S):
        super().__init__(host, grace_s=grace_s)
        self.srun = tuple(srun)
        self.python = python

    def step_argv(self, argv: Sequence[str], *, agent: bool = False) -> list:
        """`argv` as a step on this node."""
        return [*self.srun, *(AGENT_STEP if agent else ()), *argv]

    def _agent_argv(self, argv: Sequence[str]) -> list:
        return self.step_argv(argv, agent=True)

    def _guard_argv(self, mode: str) -> list:
        return self.step_argv(guard_argv(self.python, mode))

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        """As on any host; srun's own report of the step's exit status is left out of stderr (the
        status is the command's own, from the guard)."""
        result = super().exec(argv, env=env, cwd=cwd, timeout=timeout)
        own = {f.line for f in parse_task_failures(result.stderr)}
        if not own:
            return result
        kept = "".join(line for line in result.stderr.splitlines(keepends=True) if line.rstrip() not in own)
        return CommandResult(result.returncode, result.stdout, kept)

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        result = self._step(kill_argv(self.python, pgid, sig, verify_env))
        return kill_outcome(self.host, pgid, result.returncode, result.stderr.decode("utf-8", "replace"))

    # -- files on the node

    def read_file(self, path: str) -> bytes:
        result = self._step(self._reader(path))
        self._check_read(path, result.returncode, result.stderr)
        return result.stdout

    def _reader(self, path: str) -> list:
        """The guard's `read` mode: `cat`, but it exits only once srun has taken every byte."""
        return [self.python, "-S", "-c", guard_source(), "read", path]

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        proc = subprocess.Popen(self.step_argv(self._reader(path)), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while True:
                data = proc.stdout.read(chunk)
                if not data:
                    break
                yield data
        finally:
            proc.stdout.close()
            err = proc.stderr.read()
            code = proc.wait()
        self._check_read(path, code, err)

    def _check_read(self, path: str, code: int, stderr: bytes) -> None:
        """`FileNotFoundError` for a missing file, `HostError` for any other failed read."""
        if code == 0:
            return
        err = stderr.decode("utf-8", "replace").strip()
        if "No such file" in err:
            raise FileNotFoundError(2, f"{path} does not exist on {self.host}", path)
        raise HostError(self.host, f"cannot read {path}: {err or f'exit {code}'}")

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._write(path, [data], mode, len(data))

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644) -> int:
        return self._write(path, chunks, mode, -1)

    def _write(self, path: str, chunks: Iterable[bytes], mode: int, size: int) -> int:
        """Stream `chunks` into `path` on the node (atomically); with `size` >= 0 the node checks it got
        exactly that many bytes before the file takes its name."""
        argv = [self.python, "-S", "-c", _WRITE, path, f"{mode:o}", str(size)]
        proc = subprocess.Popen(self.step_argv(argv),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        written = 0
        try:
            for data in chunks:
                proc.stdin.write(data)
                written += len(data)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        received = proc.stdout.read().decode("ascii", "replace").strip()
        if proc.wait() != 0:
            raise HostError(self.host, f"cannot write {path}: {err.splitlines()[-1] if err else 'failed'}")
        if received != str(written):
            raise HostError(self.host, f"writing {path}: the node received {received or 'nothing'} of "
                                       f"{written} bytes")
        return written

    def _step(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.step_argv(argv), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=FILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise HostError(self.host, f"srun did not finish within {FILE_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise HostError(self.host, f"cannot run srun: {exc}") from None
