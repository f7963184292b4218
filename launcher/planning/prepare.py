"""Prepare a launch: everything that can be wrong with the input is found before anything is written or
started (cluster file, overrides, options, device IPs, placement, the first plan of every stage).

`prepare(request)` returns a `PreparedLaunch`, complete: the spec as the job will use it, the job's id and
directory, one `PlanFactory` per stage, the host pool when there are spares, the Slurm allocation when
the job runs inside one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from launcher.errors import BadInput, HostError
from launcher.exclusion import HostPool, NoSpareLeft
from launcher.hccn import discover_device_ips, needs_discovery
from launcher.jobs import new_job_id, resolve_runs_dir
from launcher.logs.format import parse_ranks
from launcher.planning.factory import PlanFactory
from launcher.planning.request import LaunchRequest
from launcher.render.artifacts import JOB_ID
from launcher.spec.load import load_cluster, parse_override, with_max_restarts, with_stage_options
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.workload import Workload, workloads_for

ReadFile = Callable[[HostSpec, str], str]


@dataclass(frozen=True)
class PreparedLaunch:
    """A launch ready to start (or to show, for a dry run)."""

    request: LaunchRequest
    spec: ClusterSpec
    job_id: str
    job_dir: Path
    factories: Tuple[PlanFactory, ...]
    pool: Optional[HostPool] = None
    allocation: Optional[object] = None
    #: A `backend: slurm` spec outside an allocation (dry run): its hosts stand for nodes not known yet.
    stand_in_nodes: bool = False

    @property
    def factory(self) -> PlanFactory:
        """The first stage's factory."""
        return self.factories[0]

    @property
    def workloads(self) -> Tuple[Workload, ...]:
        return tuple(f.workload for f in self.factories)

    @property
    def label(self) -> str:
        """The stage(s) for the job record: `r1`, `r1,r2,eval`, `command`."""
        return ",".join(w.stage for w in self.workloads)


def prepare(request: LaunchRequest, read_file: Optional[ReadFile] = None) -> PreparedLaunch:
    """The prepared launch of `request`; `BadInput` (naming the field, option or host) on any bad input."""
    workloads = workloads_for(request.stages, request.command)
    overrides: Dict[str, object] = dict(parse_override(o) for o in request.overrides)
    spec = load_cluster(request.cluster_path, overrides or None)
    if request.max_restarts is not None:
        spec = with_max_restarts(spec, request.max_restarts)
    if request.settings:
        spec = with_stage_options(spec, workloads[0].stage, request.settings)
    for workload in workloads:
        workload.check_spec(spec)
    allocation = None
    if spec.slurm is not None:
        spec, allocation = _in_allocation(spec, request)
    stand_in = spec.slurm is not None and not spec.hosts[0].srun
    pool = _host_pool(spec, request.exclude_hosts)
    spec = pool.spec if pool is not None else spec
    device_ips = _device_ips(spec, request, stand_in, read_file)
    job_id = _job_id(request, spec)
    job_dir = Path(request.job_dir) if request.job_dir else resolve_runs_dir(request.runs_dir) / job_id
    first = PlanFactory.create(spec, workloads[0], str(job_dir.absolute()), job_id, device_ips)
    _check_ranks(request.ranks, len(first.slots))
    factories = (first, *(first.for_workload(w) for w in workloads[1:]))
    return PreparedLaunch(request=request, spec=spec, job_id=job_id, job_dir=job_dir, factories=factories,
                          pool=pool, allocation=allocation, stand_in_nodes=stand_in)


def _job_id(request: LaunchRequest, spec: ClusterSpec) -> str:
    job_id = request.job_id
    if job_id is None and request.job_dir and JOB_ID.fullmatch(Path(request.job_dir).name):
        job_id = Path(request.job_dir).name
    if job_id is None:
        job_id = new_job_id(spec.name, request.label)
    if not JOB_ID.fullmatch(job_id):
        raise BadInput(f"--job-id: {job_id!r} is not a job id (letters, digits, '.', '_', '-')")
    return job_id


def _device_ips(spec: ClusterSpec, request: LaunchRequest, stand_in: bool,
                read_file: Optional[ReadFile]) -> Mapping[str, Mapping[int, str]]:
    """Device IPs of every host and spare that needs them (HCCL rank tables)."""
    if stand_in:
        # a dry run outside an allocation: the nodes and their device IPs are not known yet
        return {h.name: {d: f"<{h.name} device {d} ip>" for d in h.devices} for h in spec.hosts}
    everyone = dataclasses.replace(spec, hosts=spec.hosts + spec.spares)
    if not needs_discovery(everyone):
        return {}
    reader = read_file or (folder_reader(request.hccn_conf_dir) if request.hccn_conf_dir else host_reader())
    return discover_device_ips(everyone, reader)


def _in_allocation(spec: ClusterSpec, request: LaunchRequest):
    """A `backend: slurm` spec bound to the allocation this runs in, and the allocation; outside one only
    a dry run (or a submit) goes on, with placeholder nodes."""
    from launcher.slurm.allocation import bind, current_allocation

    allocation = None if request.queued else current_allocation()
    if allocation is not None:
        return bind(spec, allocation), allocation
    if request.dry_run or request.queued:
        return spec, None
    raise BadInput(f"{spec.source}: backend slurm runs inside a Slurm allocation and this is not one "
                   f"(SLURM_JOB_ID is not set): run `salloc -N {spec.slurm.nodes} refinenet-launch ...`, or "
                   f"`refinenet-launch submit --cluster ...` to queue it with sbatch")


def _host_pool(spec: ClusterSpec, exclude: Sequence[str]) -> Optional[HostPool]:
    """The job's host pool when it has spares (or hosts to exclude): `--exclude-host` applied."""
    if not spec.spares and not exclude:
        return None
    pool = HostPool(spec, list(spec.spares))
    names = {h.name for h in spec.hosts}
    for name in exclude:
        if name not in names:
            known = ", ".join(sorted(names))
            raise BadInput(f"--exclude-host: {name!r} is not a host of {spec.name} (hosts: {known})")
        try:
            pool.exclude(name, "excluded by --exclude-host")
        except NoSpareLeft as exc:
            raise BadInput(f"--exclude-host: {exc}") from None
    return pool


def _check_ranks(text: Optional[str], world: int) -> None:
    if not text:
        return
    outside = sorted(r for r in parse_ranks(text) if r >= world)
    if outside:
        raise BadInput(f"--ranks: {', '.join(map(str, outside))} not in this job (ranks 0..{world - 1})")


# ---------------------------------------------------------------------------------------------
# Reading hccn.conf


def folder_reader(folder: str) -> ReadFile:
    """Read `<folder>/<host name>.conf`, else `<folder>/hccn.conf`, on this machine."""
    def read(host: HostSpec, path: str) -> str:
        root = Path(folder)
        for candidate in (root / f"{host.name}.conf", root / "hccn.conf"):
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
        raise FileNotFoundError(2, f"no {host.name}.conf or hccn.conf in {folder}", str(root))
    return read


def host_reader() -> ReadFile:
    """Read the file on its host, through the host's transport."""
    from launcher.transport.factory import open_transport

    def read(host: HostSpec, path: str) -> str:
        try:
            transport = open_transport(host)
            try:
                return transport.read_file(path).decode("utf-8")
            finally:
                transport.close()
        except HostError as exc:
            raise BadInput(f"host {host.name}: cannot read {path}: {exc.cause}") from None
    return read


__all__ = ["PreparedLaunch", "prepare", "folder_reader", "host_reader"]
