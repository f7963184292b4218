"""`msrun`: one msrun per host; each worker's log file is tailed into that rank's log.

msrun runs its workers in sessions of their own and writes their output to
`<log_dir>/worker_<rank>.log`; SIGTERM to msrun orphans them, SIGINT makes it stop them.
"""
from __future__ import annotations

import posixpath
import re
import shlex
import signal
from typing import Sequence

from launcher.backends.base import Backend, Companion
from launcher.plan import LaunchPlan, ProcessSpec

_LOG_DIR = re.compile(r"--log_dir=(\S+)")


def msrun_log_dir(proc: ProcessSpec) -> str:
    """The `--log_dir` of a rendered msrun command."""
    match = _LOG_DIR.search(proc.command)
    if not match:
        raise ValueError(f"{proc.name}: the msrun command has no --log_dir")
    return shlex.split(match.group(1))[0]


class MsrunBackend(Backend):
    name = "msrun"
    stop_signal = signal.SIGINT

    def companions(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Companion]:
        if proc.role != "msrun":
            return ()
        log_dir = msrun_log_dir(proc)
        return tuple(
            Companion(name=f"tail-r{rank}", host=proc.host, rank=rank,
                      argv=("tail", "-n", "+1", "-F", posixpath.join(log_dir, f"worker_{rank}.log")))
            for rank in proc.ranks)
