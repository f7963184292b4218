"""The launch plan: every rendered thing one attempt of a job needs, structured, nothing started.

The runner executes each `ProcessSpec` exactly as shown (`["bash", "-c", command]` with `env`
added to the host's environment, in `cwd`, through the host's transport) after copying each
`FileSpec` to its host. `--dry-run` writes the same plan into the job directory for people to read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from launcher.placement import RankSlot

__all__ = ["FORMAT", "ProcessSpec", "FileSpec", "LaunchPlan", "write_plan", "PLAN_FILE"]

FORMAT = "refinenet-plan/1"
PLAN_FILE = "plan.json"
SCRIPTS_DIR = "scripts"
ENV_DIR = "env"
ROLES = ("scheduler", "rank", "msrun", "mpirun")


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start on `host`: `bash -c command` with `env` added, in `cwd`.

    `ranks` are the ranks it runs (one for `rank`, a host's ranks for `msrun`, all for `mpirun`,
    none for `scheduler`). `name` is its process name in the job record (`r<rank>` for a rank).
    """

    name: str
    host: str
    role: str
    ranks: Tuple[int, ...]
    command: str
    env: Mapping[str, str]
    cwd: str
    log_name: str
    #: The program `command` execs, when the command is exactly that (a workload's own argv): what a
    #: warm interpreter of the host's agent can run instead.
    argv: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "host": self.host, "role": self.role, "ranks": list(self.ranks),
                "command": self.command, "env": dict(self.env), "cwd": self.cwd, "log_name": self.log_name,
                "argv": list(self.argv)}


@dataclass(frozen=True)
class FileSpec:
    """A file the runner writes on `host` at `path` before starting processes; `local_name` is its
    copy in the job directory."""

    host: str
    path: str
    content: str
    mode: int = 0o644
    local_name: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "path": self.path, "mode": oct(self.mode), "local_name": self.local_name,
                "size": len(self.content.encode("utf-8"))}


@dataclass(frozen=True)
class LaunchPlan:
    """Everything rendered for one attempt of one stage of a job."""

    job_id: str
    cluster: str
    stage: str
    backend: str
    device: str
    attempt: int
    resume: Optional[str]
    job_dir: str
    master_addr: str
    master_port: int
    master_host: str
    slots: Tuple[RankSlot, ...]
    processes: Tuple[ProcessSpec, ...]
    files: Tuple[FileSpec, ...]
    host_dirs: Mapping[str, str]
    scripts: Mapping[str, str]
    env_files: Mapping[str, str]

    @property
    def world_size(self) -> int:
        return len(self.slots)

    @property
    def hosts(self) -> Tuple[str, ...]:
        """Hosts with something to start or copy, in rank order."""
        seen: Dict[str, None] = {}
        for s in self.slots:
            seen.setdefault(s.host)
        for p in self.processes:
            seen.setdefault(p.host)
        for f in self.files:
            seen.setdefault(f.host)
        return tuple(seen)

    def processes_on(self, host: str) -> Tuple[ProcessSpec, ...]:
        return tuple(p for p in self.processes if p.host == host)

    def files_on(self, host: str) -> Tuple[FileSpec, ...]:
        return tuple(f for f in self.files if f.host == host)

    def local_files(self) -> Dict[str, str]:
        """Job-directory name -> content of every artifact written by `write_plan` (plan.json aside)."""
        out: Dict[str, str] = {}
        for f in self.files:
            out.setdefault(f.local_name, f.content)
        for host, text in self.scripts.items():
            out[f"{SCRIPTS_DIR}/{host}.sh"] = text
        for name, text in self.env_files.items():
            out[f"{ENV_DIR}/{name}"] = text
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT, "job_id": self.job_id, "cluster": self.cluster, "stage": self.stage,
            "backend": self.backend, "device": self.device, "attempt": self.attempt, "resume": self.resume,
            "job_dir": self.job_dir, "world_size": self.world_size,
            "master": {"addr": self.master_addr, "port": self.master_port, "host": self.master_host},
            "placement": [s.to_dict() for s in self.slots],
            "processes": [p.to_dict() for p in self.processes],
            "files": [f.to_dict() for f in self.files],
            "host_dirs": dict(self.host_dirs),
            "scripts": {h: f"{SCRIPTS_DIR}/{h}.sh" for h in self.scripts},
            "env_files": [f"{ENV_DIR}/{n}" for n in self.env_files],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"


def write_plan(plan: LaunchPlan, job_dir: Union[str, os.PathLike, None] = None) -> List[Path]:
    """Write plan.json and every artifact into the job directory; returns the paths written."""
    root = Path(job_dir if job_dir is not None else plan.job_dir)
    written: List[Path] = []
    for name, text in plan.local_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if name.startswith(f"{SCRIPTS_DIR}/"):
            path.chmod(0o755)
        written.append(path)
    plan_path = root / PLAN_FILE
    plan_path.write_text(plan.to_json(), encoding="utf-8")
    written.append(plan_path)
    return written
