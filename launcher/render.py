"""Render a `LaunchPlan` from a cluster spec and its placement, through the Jinja templates.

Shell templates run with `StrictUndefined` and a `finalize` hook that refuses any value not
passed through a quoting filter (`shquote`, `envname`, `comment`), so a template cannot put a raw
user value on a command line by mistake; the rank table template refuses values not JSON-encoded.
Command lines are rendered once per host and shared by that host's ranks; only env differs.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shlex
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jinja2

from launcher.errors import BadInput
from launcher.placement import RankSlot
from launcher.plan import FileSpec, LaunchPlan, ProcessSpec
from launcher.resources import templates_dir
from launcher.spec import STAGES, ClusterSpec, HostSpec
from launcher.workload.base import Workload

__all__ = ["render_plan", "render_rank_table", "render_hostfile", "host_job_dir", "TemplateValueError",
           "JOB_ID", "Renderer", "template", "export_lines"]

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTFILE_WORD = re.compile(r"[A-Za-z0-9._:-]+")
RANK_TABLE = "rank_table.json"
HOSTFILE = "hostfile"
MSRUN_ENTRY = "msrun_entry.py"


class TemplateValueError(jinja2.TemplateError):
    """A template tried to output a value that did not go through its quoting filter."""


class _Safe(str):
    """Text already made safe for the template's language (a quoted shell word, JSON, a comment)."""


@functools.lru_cache(maxsize=65536)
def _quote_text(text: str) -> _Safe:
    return _Safe(shlex.quote(text))


def _shquote(value: Any) -> _Safe:
    return _quote_text(str(value))


@functools.lru_cache(maxsize=4096)
def _envname(value: Any) -> _Safe:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise TemplateValueError(f"{value!r} is not an environment variable name")
    return _Safe(value)


def export_lines(env: Mapping[str, str], indent: str = "") -> _Safe:
    """`export NAME=VALUE` lines (names checked, values shell-quoted) for the env file and host scripts.

    Built here rather than in a template loop because it runs once per rank: 16k ranks would
    otherwise spend most of the render time in per-line template calls.
    """
    return _Safe("\n".join(f"{indent}export {_envname(k)}={_quote_text(v)}" for k, v in env.items()))


def _comment(value: Any) -> _Safe:
    return _Safe(" ".join(str(value).splitlines()))


def _json(value: Any) -> _Safe:
    return _Safe(json.dumps(str(value)))


def _require_safe(value: Any) -> Any:
    if isinstance(value, _Safe):
        return value
    raise TemplateValueError(f"template outputs {value!r} without a quoting filter")


def _hostfile_word(value: Any) -> Any:
    text = str(value)
    if not _HOSTFILE_WORD.fullmatch(text):
        raise TemplateValueError(f"{text!r} cannot appear in a hostfile")
    return text


@functools.cache
def _environment(kind: str, folder: str) -> jinja2.Environment:
    finalize = {"shell": _require_safe, "json": _require_safe, "text": _hostfile_word}[kind]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=False, finalize=finalize)
    env.filters.update(shquote=_shquote, envname=_envname, comment=_comment, json=_json)
    return env


@functools.cache
def template(name: str) -> jinja2.Template:
    """A template of templates/, with the quoting rules of its kind (shell, JSON, text)."""
    kind = "shell" if name.endswith(".sh.j2") else "json" if name.endswith(".json.j2") else "text"
    return _environment(kind, str(templates_dir())).get_template(name)


# ---------------------------------------------------------------------------------------------
# Artifacts


def render_rank_table(spec: ClusterSpec, slots: Sequence[RankSlot]) -> str:
    """HCCL rank table v1.0 as hccl_tools.py/merge_hccl.py lay it out (json indent 4, all strings)."""
    hosts = {h.name: h for h in spec.hosts}
    servers: Dict[str, Dict[str, Any]] = {}
    for s in slots:
        if s.device_ip is None:
            raise BadInput(f"rank {s.rank} on host {s.host}: no device IP for the rank table")
        server = servers.setdefault(s.host, {"server_id": hosts[s.host].address, "devices": []})
        server["devices"].append({"device_id": s.device_id, "device_ip": s.device_ip, "rank_id": s.rank})
    return template("rank_table.json.j2").render(servers=list(servers.values()))


def render_hostfile(spec: ClusterSpec, slots: Sequence[RankSlot]) -> str:
    """OpenMPI hostfile, `address slots=N` per host in rank order."""
    hosts = {h.name: h for h in spec.hosts}
    counts: Dict[str, int] = {}
    for s in slots:
        counts[s.host] = counts.get(s.host, 0) + 1
    rows = [{"address": hosts[name].address, "slots": n} for name, n in counts.items()]
    return template("hostfile.j2").render(hosts=rows)


def host_job_dir(host: HostSpec, job_id: str) -> str:
    """Where the launcher keeps a job's files on a host (rank table, hostfile, logs of scripts)."""
    return posixpath.join(host.workdir, ".refinenet", "jobs", job_id)


# ---------------------------------------------------------------------------------------------
# The plan


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
            env: Mapping[str, str], log_name: str) -> ProcessSpec:
        proc = ProcessSpec(name=name, host=host.name, role=role, ranks=tuple(ranks), command=command,
                           env=MappingProxyType(dict(env)), cwd=host.workdir, log_name=log_name)
        self.processes.append(proc)
        return proc

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
        command = template("worker.sh.j2").render(argv=self.workload.scheduler_argv(host))
        proc = self.add("scheduler", host, "scheduler", (), command, env, "scheduler.log")
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
        self.add(f"r{slot.rank}", host, "rank", (slot.rank,), self.workload_command(host), env,
                 f"rank_{slot.rank}.log")
        self.rank_env_file(slot, env)

    # -- scripts

    def scripts(self, order: Sequence[str]) -> Dict[str, str]:
        out = {}
        script = template("host_script.sh.j2")
        procs_by_host: Dict[str, List[Dict[str, Any]]] = {}
        for p in self.processes:
            procs_by_host.setdefault(p.host, []).append(
                {"name": p.name, "role": p.role, "ranks": ",".join(map(str, p.ranks)), "cwd": p.cwd,
                 "exports": export_lines(p.env, "  "), "command": _Safe(p.command), "log_name": p.log_name})
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


def render_plan(spec: ClusterSpec, slots: Sequence[RankSlot], stage: str, job_dir: str, *, job_id: str,
                attempt: int = 0, resume: Union[str, Mapping[str, str], None] = None,
                workload: Optional[Workload] = None) -> LaunchPlan:
    """Render every artifact of one attempt of `stage`; starts nothing, touches no file.

    `resume` (an absolute checkpoint path on the hosts, or host name -> its path there) becomes
    `--resume PATH` of the training command. `eval` and `export` run one process on rank 0's host
    and device.
    """
    from launcher.backends import backend_for
    from launcher.workload import workload_for

    if workload is None:
        if stage not in STAGES:
            raise BadInput(f"--stage: {stage!r} is not one of {', '.join(STAGES)}")
        workload = workload_for(stage)
    if not JOB_ID.fullmatch(job_id):
        raise BadInput(f"--job-id: {job_id!r} is not a job id (letters, digits, '.', '_', '-')")
    if spec.master.port == "auto":
        raise BadInput("master.port is auto: pick a port before rendering (launcher.spec.with_master_port)")
    if resume is not None:
        if not workload.resumable:
            raise BadInput(f"resume: stage {stage} does not train, there is nothing to resume")
        paths = [resume] if isinstance(resume, str) else list(resume.values())
        missing = sorted({s.host for s in slots} - set(resume)) if not isinstance(resume, str) else []
        if missing:
            raise BadInput(f"resume: no checkpoint path for host(s) {', '.join(missing)}")
        for path in paths:
            if not path.startswith("/") and not path.startswith("latest:/"):
                raise BadInput(f"resume: {path!r} is not an absolute checkpoint path")
    if not slots:
        raise BadInput("placement is empty: no ranks to launch")
    if attempt < 0:
        raise BadInput(f"attempt: {attempt} is negative")
    slots = tuple(slots)
    single = workload.single_process
    run_slots = slots[:1] if single else slots
    r = Renderer(spec, run_slots, workload, os.fspath(job_dir), job_id, attempt, resume)
    if single:
        r.single_process()
    else:
        backend_for(spec.backend).render(r)
    order = list(dict.fromkeys([spec.master.host, *r.by_host])) if spec.backend == "mpirun" and not single \
        else list(r.by_host)
    if not single and spec.backend in ("dynamic", "msrun") and spec.master.host not in order:
        order.insert(0, spec.master.host)
    return LaunchPlan(
        job_id=job_id, cluster=spec.name, stage=workload.stage, backend=spec.backend, device=spec.device,
        attempt=attempt, resume=resume if resume is None or isinstance(resume, str) else dict(resume),
        job_dir=os.fspath(job_dir), master_addr=spec.master.addr,
        master_port=r.port, master_host=spec.master.host, slots=run_slots, processes=tuple(r.processes),
        files=tuple(r.files), host_dirs=MappingProxyType({n: r.host_dir(r.hosts[n]) for n in order}),
        scripts=MappingProxyType(r.scripts(order)), env_files=MappingProxyType(r.env_files))
