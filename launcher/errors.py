"""Typed errors of the launcher, caught once at the CLI edge and turned into exit codes.

Exit codes: 0 success, 1 the job failed, 2 bad input (nothing was started).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from launcher.failures import Failure

__all__ = ["LauncherError", "BadInput", "ClusterFileError", "HostError", "LeaseRefused", "JobNotFound",
           "JobFailed"]


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


class LeaseRefused(HostError):
    """A host refused the job's lease while the job runs (another job holds the devices or slots, or the
    host is cordoned): nothing of the job may run there. Not the host's fault."""


class JobNotFound(BadInput):
    """No job directory of that id; lists the ones that exist."""

    def __init__(self, job: str, existing: Sequence[str]):
        known = ", ".join(existing) if existing else "none"
        super().__init__(f"no job {job!r}; jobs that exist: {known}")
        self.job, self.existing = job, list(existing)


class JobFailed(LauncherError):
    """The job failed for good (restarts exhausted); carries the root cause."""

    exit_code = 1

    def __init__(self, message: str, root_cause: Optional[Failure] = None):
        super().__init__(message)
        self.root_cause = root_cause
