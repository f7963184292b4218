"""Typed errors of the launcher, caught once at the CLI edge and turned into exit codes.

Exit codes: 0 success, 1 the job failed, 2 bad input (nothing was started).
"""
from __future__ import annotations

from typing import Optional, Sequence

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


class HostError(Exception):
    """A host could not be reached, authenticated or used; carries the host and the cause."""

    def __init__(self, host: str, cause: str):
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


class JobNotFound(BadInput):
    """No job directory of that id; lists the ones that exist."""

    def __init__(self, job: str, existing: Sequence[str]):
        known = ", ".join(existing) if existing else "none"
        super().__init__(f"no job {job!r}; jobs that exist: {known}")
        self.job, self.existing = job, list(existing)


class RankFailure(Exception):
    """A process of an attempt ended badly: when (launcher clock, epoch seconds), which rank (None for
    an auxiliary process such as the scheduler: then `who` names it), on which host, how, its log tail."""

    def __init__(self, rank: Optional[int], host: str, exit_code: Optional[int] = None,
                 signal: Optional[int] = None, log_tail: Sequence[str] = (), reason: str = "",
                 time: Optional[float] = None, who: str = "", kind: str = "exit"):
        how = reason or (f"killed by signal {signal}" if signal else f"exit code {exit_code}")
        who = who or (f"rank {rank}" if rank is not None else "")
        super().__init__(f"{who} on {host}: {how}" if who else f"{host}: {how}")
        self.rank, self.host, self.exit_code, self.signal = rank, host, exit_code, signal
        self.log_tail, self.reason, self.time, self.who = list(log_tail), how, time, who
        #: exit (an exit code or signal), hang, lost (agent or connection), unreachable, device, scan.
        self.kind = kind


class JobFailed(LauncherError):
    """The job failed for good (restarts exhausted); carries the root cause."""

    exit_code = 1

    def __init__(self, message: str, root_cause: Optional[RankFailure] = None):
        super().__init__(message)
        self.root_cause = root_cause
