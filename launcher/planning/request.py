"""What a user asked a launch to do: the command line as a frozen value, kept in the job record.

`LaunchRequest.from_args` turns the parsed command line into it (the CLI's only job); `to_argv` turns it
back into the launcher's command line (a Slurm batch script runs that); `to_dict`/`from_dict` keep it in
`job.json`, so a job can be resumed or inspected with exactly the options it was launched with.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from launcher.errors import BadInput
from launcher.resources import cluster_configs_dir


def resolve_cluster_path(value: str) -> Path:
    """A path, or the name of a shipped cluster file (`local-cpu`, `8xascend.yaml`)."""
    path = Path(value)
    if path.exists() or "/" in value:
        return path
    for candidate in (value, f"{value}.yaml"):
        shipped = cluster_configs_dir() / candidate
        if shipped.is_file():
            return shipped
    return path


@dataclass(frozen=True)
class LaunchRequest:
    """One launch as asked: the cluster file, what runs (stages in order, or a command), and options."""

    cluster: str
    stages: Tuple[str, ...] = ()
    command: Tuple[str, ...] = ()
    dry_run: bool = False
    job_dir: Optional[str] = None
    job_id: Optional[str] = None
    runs_dir: Optional[str] = None
    max_restarts: Optional[int] = None
    ranks: Optional[str] = None
    show_framework_logs: bool = False
    settings: Tuple[str, ...] = ()
    overrides: Tuple[str, ...] = ()
    exclude_hosts: Tuple[str, ...] = ()
    hccn_conf_dir: Optional[str] = None
    #: `--wait [SECONDS]`: None (do not wait), "" (wait for ever) or the seconds as given.
    wait: Optional[str] = None
    #: Prepared outside the Slurm allocation it will run in (`submit`): nothing is bound to one yet.
    queued: bool = False

    def __post_init__(self) -> None:
        if self.command and self.stages:
            raise BadInput(f"give --stage or a command after --, not both (--stage {','.join(self.stages)}, "
                           f"command {' '.join(self.command)!r})")
        if not self.command and not self.stages:
            raise BadInput("nothing to run: give --stage r1|r2|eval|export, or a command after --")
        if self.command and self.settings:
            raise BadInput("--set gives options of a RefineNet stage; with a command, put options on its "
                           "command line")
        if len(self.stages) > 1 and self.settings:
            raise BadInput("--set applies to one stage: with several, use job.stage_overrides in the "
                           "cluster file")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchRequest:
        """The request of `refinenet-launch [options] [-- COMMAND ...]` as parsed by its argparse parser."""
        command = list(getattr(args, "command", None) or [])
        if command and command[0] != "--":
            raise BadInput(f"unexpected argument {command[0]!r}: a command to run goes after --")
        return cls(cluster=args.cluster, stages=tuple(args.stage.split(",")) if args.stage else (),
                   command=tuple(command[1:]), dry_run=bool(args.dry_run), job_dir=args.job_dir,
                   job_id=args.job_id, runs_dir=args.runs_dir, max_restarts=args.max_restarts,
                   ranks=args.ranks, show_framework_logs=bool(args.show_framework_logs),
                   settings=tuple(args.set or ()), overrides=tuple(args.override or ()),
                   exclude_hosts=tuple(args.exclude_host or ()), hccn_conf_dir=args.hccn_conf_dir,
                   wait=getattr(args, "wait", None),
                   queued=bool(getattr(args, "queued", False)))

    @property
    def cluster_path(self) -> Path:
        return resolve_cluster_path(self.cluster)

    @property
    def label(self) -> str:
        """What runs, for job ids and records: `r1`, `r1-r2-eval`, or `command`."""
        return "-".join(self.stages) if self.stages else "command"

    def with_changes(self, **changes: Any) -> LaunchRequest:
        return dataclasses.replace(self, **changes)

    def to_argv(self, python: str, job_dir: Path) -> List[str]:
        """The launcher's command line for this request, into `job_dir` (absolute paths throughout)."""
        argv = [python, "-m", "launcher.cli", "--cluster", str(self.cluster_path.absolute()),
                "--job-dir", str(job_dir)]
        if self.stages:
            argv += ["--stage", ",".join(self.stages)]
        for flag, values in (("--set", self.settings), ("--override", self.overrides),
                             ("--exclude-host", self.exclude_hosts)):
            for value in values:
                argv += [flag, value]
        if self.max_restarts is not None:
            argv += ["--max-restarts", str(self.max_restarts)]
        if self.ranks:
            argv += ["--ranks", self.ranks]
        if self.show_framework_logs:
            argv.append("--show-framework-logs")
        if self.hccn_conf_dir:
            argv += ["--hccn-conf-dir", str(Path(self.hccn_conf_dir).absolute())]
        if self.wait is not None:
            argv += ["--wait", self.wait] if self.wait else ["--wait"]
        if self.command:
            argv += ["--", *self.command]
        return argv

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LaunchRequest:
        names = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**values)


__all__ = ["LaunchRequest", "resolve_cluster_path"]
