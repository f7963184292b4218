"""Typed errors of the launcher, caught once at the CLI edge and turned into exit codes.

Exit codes: 0 success, 1 the job failed, 2 bad input (nothing was started).
"""
from __future__ import annotations

from typing import Optional, Sequence

from launcher.transport.base import HostError

__all__ = ["LauncherError", "BadInput", "ClusterFileError", "HostError", "JobNotFound", "JobFailed",
           "RankFailure"]


class LauncherError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 2


class BadInput(LauncherError):
    """Bad command-line or file input; nothing was started."""


class ClusterFileError(BadInput):
    """A cluster file is invalid: names the file, the field path (`hosts[1].devices[3]`) and the problem."""

    def __init__(self, path: str, field: str, problem: str):
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}")
        self.path, self.field, self.problem = path, field, problem


class JobNotFound(BadInput):
    """No job directory of that id; lists the ones that exist."""

    def __init__(self, job: str, existing: Sequence[str]):
        known = ", ".join(existing) if existing else "none"
        super().__init__(f"no job {job!r}; jobs that exist: {known}")
        self.job, self.existing = job, list(existing)


class RankFailure(Exception):
    """A rank ended badly: which rank, on which host, how, and the tail of its log."""

    def __init__(self, rank: int, host: str, exit_code: Optional[int] = None,
                 signal: Optional[int] = None, log_tail: Sequence[str] = (), reason: str = ""):
        how = reason or (f"killed by signal {signal}" if signal else f"exit code {exit_code}")
        super().__init__(f"rank {rank} on {host}: {how}")
        self.rank, self.host, self.exit_code, self.signal = rank, host, exit_code, signal
        self.log_tail, self.reason = list(log_tail), how


class JobFailed(LauncherError):
    """The job failed for good (restarts exhausted); carries the root cause."""

    exit_code = 1

    def __init__(self, message: str, root_cause: Optional[RankFailure] = None):
        super().__init__(message)
        self.root_cause = root_cause
