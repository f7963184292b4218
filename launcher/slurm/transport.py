"""Commands and files on a node of the Slurm allocation the launcher runs in, each as a job step.

Every command runs as `srun --jobid J --overlap -N1 -n1 -w NODE ... COMMAND`: srun carries stdin,
stdout and stderr between the launcher and the node, and its end (or the launcher's) ends the step.
The host agent gets the node's whole share of the allocation (`--whole`, no CPU binding) since it
starts every rank there; short commands (checks, scans, health samples) run under the guard as on
any host. Files are read and written on the node itself by the host program's `read` and `write`
modes, so node-local disks work.
"""
from __future__ import annotations

import hashlib
import subprocess
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from launcher.hostside.files import end_marker
from launcher.slurm.text import parse_task_failures
from launcher.transport.base import CommandResult, HostError
from launcher.transport.hostprog import host_argv, host_stdin
from launcher.transport.local import DEFAULT_GRACE_S, LocalTransport
from launcher.transport.modes import read_failure, write_args, write_outcome

#: Options of the agent's step only: all of the node's CPUs (and devices) for the ranks it starts.
AGENT_STEP = ("--whole", "--cpu-bind=none")
FILE_TIMEOUT_S = 120.0


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

    def _command(self, mode: str, *args: str) -> List[str]:
        return self.step_argv(host_argv(self.python, mode, *args))

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        """As on any host; srun's own report of the step's exit status is left out of stderr (the
        status is the command's own, from the guard)."""
        result = super().exec(argv, env=env, cwd=cwd, timeout=timeout)
        return CommandResult(result.returncode, result.stdout, _without_srun_lines(result.stderr))

    # -- files on the node

    def read_file(self, path: str) -> bytes:
        return b"".join(self.read_chunks(path))

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        try:
            proc = subprocess.Popen(self._command("read", path), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise HostError(self.host, f"cannot run srun: {exc}") from None
        try:
            proc.stdin.write(host_stdin())
            proc.stdin.close()
            while True:
                data = proc.stdout.read(chunk)
                if not data:
                    break
                yield data
        finally:
            proc.stdout.close()
            err = _without_srun_lines(proc.stderr.read().decode("utf-8", "replace"))
            code = proc.wait()
        failure = read_failure(self.host, path, code, err)
        if failure is not None:
            raise failure

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.write_chunks(path, [data], mode, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644, *,
                     size: Optional[int] = None, sha256: Optional[str] = None) -> int:
        """Stream `chunks` into `path` on the node (atomically, checked there; see `Transport`)."""
        try:
            proc = subprocess.Popen(self._command("write", *write_args(path, mode, size, sha256)),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise HostError(self.host, f"cannot run srun: {exc}") from None
        written = 0
        try:
            proc.stdin.write(host_stdin())
            for data in chunks:
                proc.stdin.write(data)
                written += len(data)
            if size is None:
                proc.stdin.write(end_marker(written))
        except BrokenPipeError:
            pass  # the node stopped reading: its exit code and message say why
        except BaseException:
            self._finish(proc, path)  # `chunks` failed: no end marker, so the node keeps nothing
            raise
        out, err = self._finish(proc, path)
        return write_outcome(self.host, path, proc.returncode, out.decode("utf-8", "replace"),
                             _without_srun_lines(err.decode("utf-8", "replace")), written).size


    def _finish(self, proc: subprocess.Popen, path: str) -> Tuple[bytes, bytes]:
        """Close the step's stdin and collect its output (`HostError` if it does not end in time)."""
        try:
            return proc.communicate(timeout=FILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise HostError(self.host, f"writing {path}: srun did not finish within {FILE_TIMEOUT_S:g} s"
                            ) from None


def _without_srun_lines(stderr: str) -> str:
    """A step's stderr less srun's own report of the task's exit (the command's status is its own)."""
    own = {f.line for f in parse_task_failures(stderr)}
    if not own:
        return stderr
    return "".join(line for line in stderr.splitlines(keepends=True) if line.rstrip() not in own)
