"""Render one attempt's `LaunchPlan`: the workload's and the backend's pieces, through the templates.

The backend and the workload are passed in: this module names neither.
"""
from __future__ import annotations

import os
from types import MappingProxyType
from typing import Mapping, Sequence, Union

from launcher.backends.base import Backend
from launcher.errors import BadInput
from launcher.placement import RankSlot
from launcher.plan import LaunchPlan
from launcher.render.artifacts import JOB_ID
from launcher.render.renderer import Renderer
from launcher.spec.model import ClusterSpec
from launcher.workload.base import Workload

__all__ = ["render_plan"]


def render_plan(spec: ClusterSpec, slots: Sequence[RankSlot], workload: Workload, backend: Backend,
                job_dir: str, *, job_id: str, attempt: int = 0,
                resume: Union[str, Mapping[str, str], None] = None) -> LaunchPlan:
    """Render every artifact of one attempt of `workload` under `backend`; starts nothing, touches no file.

    `resume` (an absolute checkpoint path on the hosts, or host name -> its path there) becomes
    the workload's resume argument. A single-process workload (evaluation, export) runs one process on
    rank 0's host and device.
    """
    if not JOB_ID.fullmatch(job_id):
        raise BadInput(f"--job-id: {job_id!r} is not a job id (letters, digits, '.', '_', '-')")
    if spec.master.port == "auto":
        raise BadInput("master.port is auto: pick a port before rendering (spec.load.with_master_port)")
    if resume is not None:
        if not workload.resumable:
            raise BadInput(f"resume: {workload.describe()} does not train, there is nothing to resume")
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
        order = list(r.by_host)
    else:
        backend.render(r)
        order = backend.host_order(r)
    return LaunchPlan(
        job_id=job_id, cluster=spec.name, stage=workload.stage, backend=spec.backend, device=spec.device,
        attempt=attempt, resume=resume if resume is None or isinstance(resume, str) else dict(resume),
        job_dir=os.fspath(job_dir), master_addr=spec.master.addr,
        master_port=r.port, master_host=spec.master.host, slots=run_slots, processes=tuple(r.processes),
        files=tuple(r.files), host_dirs=MappingProxyType({n: r.host_dir(r.hosts[n]) for n in order}),
        scripts=MappingProxyType(r.scripts(order)), env_files=MappingProxyType(r.env_files))
