"""The `Renderer` of one attempt's plan: what every backend needs (spec, hosts, placement, ids, the
workload's command) and the pieces backends add (processes, files, env files, host scripts).

Command lines are rendered once per host and shared by that host's ranks; only env differs.
"""
from __future__ import annotations

import posixpath
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from launcher.placement import RankSlot
from launcher.plan import FileSpec, ProcessSpec
from launcher.render.artifacts import host_job_dir
from launcher.render.quoting import Safe, export_lines, template
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.workload.base import Workload

__all__ = ["Renderer"]


class Renderer:
    """Builds one plan; holds what every backend needs (spec, hosts, placement, ids). Each backend's
    `render(renderer)` (launcher/backends) adds its processes and files."""

    def __init__(self, spec: ClusterSpec, slots: Tuple[RankSlot, ...], workload: Workload, job_dir: str,
                 job_id: str, attempt: int, resume: Union[str, Mapping[str, str], None]):
        self.spec, self.slots, self.workload, self.job_dir = spec, slots, workload, job_dir
        self.stage = workload.stage
        self.job_id, self.attempt, self.resume = job_id, attempt, resume
        self.hosts = {h.name: h for h in spec.hosts}
        self.by_host: Dict[str, List[RankSlot]] = {}
        for s in slots:
            self.by_host.setdefault(s.host, []).append(s)
        self.master = self.hosts[spec.master.host]
        self.port = int(spec.master.port)
        self.world = len(slots)
        self.processes: List[ProcessSpec] = []
        self.files: List[FileSpec] = []
        self.env_files: Dict[str, str] = {}
        self._commands: Dict[str, str] = {}

    # -- pieces

    def resume_for(self, host: HostSpec) -> Optional[str]:
        """The checkpoint `host`'s ranks resume from (hosts share no filesystem: paths may differ)."""
        if self.resume is None or isinstance(self.resume, str):
            return self.resume
        return self.resume[host.name]

    def host_dir(self, host: HostSpec) -> str:
        return host_job_dir(host, self.job_id)

    def attempt_dir(self, host: HostSpec) -> str:
        return posixpath.join(self.host_dir(host), f"attempt_{self.attempt}")

    def base_env(self, host: HostSpec) -> Dict[str, str]:
        # GLOG_v=3: MindSpore's own log to errors only (its INFO/WARNING chatter drowns the rank logs).
        env = {"PYTHONUNBUFFERED": "1", "GLOG_v": "3"}
        if self.spec.device == "cpu":
            env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        env.update(self.spec.env)
        env.update(host.env)
        env.update(self.workload.env(self.spec, host, self.resume_for(host)))
        env["REFINENET_JOB_ID"] = self.job_id
        env["REFINENET_STORAGE"] = self.spec.storage
        env["MS_TOPO_TIMEOUT"] = str(self.spec.timeouts.cluster_s)
        env["MS_NODE_TIMEOUT"] = str(self.spec.timeouts.heartbeat_s)
        env["REFINENET_SAVE_REQUEST"] = posixpath.join(self.attempt_dir(host), "save_request")
        if self.workload.resumable:
            env["REFINENET_COMPILE_CACHE"] = posixpath.join(self.host_dir(host), "compile_cache")
        return env

    def sched_env(self) -> Dict[str, str]:
        return {"MS_SCHED_HOST": self.spec.master.addr, "MS_SCHED_PORT": str(self.port),
                "MS_WORKER_NUM": str(self.world)}

    def visible_devices_env(self, host: HostSpec) -> Dict[str, str]:
        ids = ",".join(str(d) for d in host.devices)
        if self.spec.device == "gpu":
            return {"CUDA_VISIBLE_DEVICES": ids}
        if self.spec.device == "ascend" and host.devices != tuple(range(len(host.devices))):
            return {"ASCEND_RT_VISIBLE_DEVICES": ids}
        return {}

    def workload_argv(self, host: HostSpec) -> List[str]:
        """Every rank's command on `host` (the workload decides; see launcher/workload)."""
        return self.workload.argv(self.spec, host, self.resume_for(host))

    def workload_command(self, host: HostSpec) -> str:
        if host.name not in self._commands:
            self._commands[host.name] = template("worker.sh.j2").render(argv=self.workload_argv(host))
        return self._commands[host.name]

    def add(self, name: str, host: HostSpec, role: str, ranks: Sequence[int], command: str,
            env: Mapping[str, str], log_name: str, argv: Sequence[str] = ()) -> ProcessSpec:
        proc = ProcessSpec(name=name, host=host.name, role=role, ranks=tuple(ranks), command=command,
                           env=MappingProxyType(dict(env)), cwd=host.workdir, log_name=log_name,
                           argv=tuple(argv))
        self.processes.append(proc)
        return proc

    def add_rank(self, slot: RankSlot, env: Mapping[str, str]) -> ProcessSpec:
        """Rank `slot`'s own process: the workload's command on its host, `exec`ed."""
        host = self.hosts[slot.host]
        return self.add(f"r{slot.rank}", host, "rank", (slot.rank,), self.workload_command(host), env,
                        f"rank_{slot.rank}.log", argv=self.workload_argv(host))

    def env_file(self, file_name: str, what: str, host: str, env: Mapping[str, str],
                 notes: Sequence[str] = ()) -> None:
        self.env_files[file_name] = template("env_file.sh.j2").render(
            job_id=self.job_id, attempt=self.attempt, what=what, host=host, exports=export_lines(env),
            notes=notes) + "\n"

    def rank_env_file(self, slot: RankSlot, env: Mapping[str, str], notes: Sequence[str] = ()) -> None:
        self.env_file(f"rank_{slot.rank}.env", f"environment of rank {slot.rank}", slot.host, env, notes)

    def scheduler(self) -> None:
        host = self.master
        env = {**self.base_env(host), "MS_ROLE": "MS_SCHED", **self.sched_env()}
        argv = self.workload.scheduler_argv(host)
        command = template("worker.sh.j2").render(argv=argv)
        proc = self.add("scheduler", host, "scheduler", (), command, env, "scheduler.log", argv=argv)
        self.env_file("scheduler.env", "environment of the scheduler", host.name, proc.env)

    def copy_to_hosts(self, local_name: str, content: str, hosts: Sequence[HostSpec]) -> Dict[str, str]:
        paths = {}
        for host in hosts:
            path = posixpath.join(self.host_dir(host), local_name)
            self.files.append(FileSpec(host=host.name, path=path, content=content, mode=0o644,
                                       local_name=local_name))
            paths[host.name] = path
        return paths

    # -- backends

    def single_process(self) -> None:
        """eval/export: one plain process on rank 0's device, no cluster."""
        slot = self.slots[0]
        host = self.hosts[slot.host]
        env = self.base_env(host)
        env["LOCAL_RANK"] = "0"
        if self.spec.device != "cpu":
            env["DEVICE_ID"] = str(slot.device_id)
        self.add_rank(slot, env)
        self.rank_env_file(slot, env)

    # -- scripts

    def scripts(self, order: Sequence[str]) -> Dict[str, str]:
        out = {}
        script = template("host_script.sh.j2")
        procs_by_host: Dict[str, List[Dict[str, Any]]] = {}
        for p in self.processes:
            procs_by_host.setdefault(p.host, []).append(
                {"name": p.name, "role": p.role, "ranks": ",".join(map(str, p.ranks)), "cwd": p.cwd,
                 "exports": export_lines(p.env, "  "), "command": Safe(p.command), "log_name": p.log_name})
        files_by_host: Dict[str, List[FileSpec]] = {}
        for f in self.files:
            files_by_host.setdefault(f.host, []).append(f)
        for name in order:
            host = self.hosts[name]
            procs = procs_by_host.get(name, [])
            files = files_by_host.get(name, [])
            if not procs and not files:
                continue
            out[name] = script.render(
                job_id=self.job_id, attempt=self.attempt, stage=self.stage, host=name, address=host.address,
                log_dir=posixpath.join(self.attempt_dir(host), "logs"), files=files, processes=procs) + "\n"
        return out


