"""`msrun`: one msrun per host; each worker's log file is tailed into that rank's log.

msrun writes each worker's output to `<log_dir>/worker_<rank>.log` only (the rendered command turns
off its echo of them), so a tail per rank feeds the rank logs. Its workers run in sessions of their
own: SIGTERM ends msrun, and the transport's guard then ends the workers it left behind (the guard
ends descendants that left the group), with the same grace as any rank.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from typing import Sequence

from launcher.backends.base import Backend, Companion
from launcher.plan import LaunchPlan, ProcessSpec

_LOG_DIR = re.compile(r"--log_dir=(\S+)")
#: Creates the log (and its folder) before following it, so `tail -F` has nothing to complain about
#: while msrun starts; the path is `$1`, never part of the script.
_FOLLOW = 'mkdir -p -- "${1%/*}" && : >> "$1" && exec tail -n +1 -F -- "$1"'


def msrun_log_dir(proc: ProcessSpec) -> str:
    """The `--log_dir` of a rendered msrun command."""
    match = _LOG_DIR.search(proc.command)
    if not match:
        raise ValueError(f"{proc.name}: the msrun command has no --log_dir")
    return shlex.split(match.group(1))[0]


def follow_argv(path: str) -> tuple:
    """`tail -F` of `path` from its first line, the file created first if missing."""
    return ("sh", "-c", _FOLLOW, "tail", path)


class MsrunBackend(Backend):
    name = "msrun"

    def companions(self, proc: ProcessSpec, plan: LaunchPlan) -> Sequence[Companion]:
        if proc.role != "msrun":
            return ()
        log_dir = msrun_log_dir(proc)
        return tuple(
            Companion(name=f"tail-r{rank}", host=proc.host, rank=rank,
                      argv=follow_argv(posixpath.join(log_dir, f"worker_{rank}.log")))
            for rank in proc.ranks)
