"""The workload seam: the only place that knows what a rank runs (see `base.Workload`)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from launcher.workload.base import Workload
from launcher.workload.command import COMMAND_STAGE, CommandWorkload
from launcher.workload.refinenet import RefineNetWorkload


def workload_for(stage: str, command: Optional[Sequence[str]] = None) -> Workload:
    """The workload of a launch: a `-- COMMAND`, or a RefineNet stage."""
    if command:
        return CommandWorkload(tuple(command))
    return RefineNetWorkload(stage)


def workloads_for(stages: Sequence[str], command: Sequence[str] = ()) -> Tuple[Workload, ...]:
    """What a job runs, in order: a command, or one workload per RefineNet stage."""
    if command:
        return (CommandWorkload(tuple(command)),)
    return tuple(RefineNetWorkload(s) for s in stages)


__all__ = ["Workload", "RefineNetWorkload", "CommandWorkload", "COMMAND_STAGE", "workload_for",
           "workloads_for"]
