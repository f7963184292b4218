"""The plan factory: everything one stage of a job needs to render the plan of any of its attempts.

Built complete (`PlanFactory.create`) and frozen; a changed host set (a spare takes an excluded host's
ranks), another stage of the same job, or a port picker that asks the master host are new factories.
"""
from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Tuple, Union

from launcher.backends.base import Backend
from launcher.backends.registry import backend_for
from launcher.placement import RankSlot, place
from launcher.plan import LaunchPlan
from launcher.render.orchestrate import render_plan
from launcher.spec.load import with_master_port
from launcher.spec.model import ClusterSpec
from launcher.workload.base import Workload

#: host name -> device id -> device IP (the HCCL rank table's), as discovered before the launch.
DeviceIps = Mapping[str, Mapping[int, str]]
Resume = Union[str, Mapping[str, str], None]


def free_port() -> int:
    """A TCP port free on this machine now (for `master.port: auto` with a local master)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PlanFactory:
    """`factory(attempt, resume) -> LaunchPlan` for one workload on one host set. With `master.port: auto`
    every attempt gets a port `pick_port()` found free at that moment."""

    spec: ClusterSpec
    workload: Workload
    backend: Backend
    job_dir: str
    job_id: str
    slots: Tuple[RankSlot, ...]
    device_ips: DeviceIps = field(default_factory=lambda: MappingProxyType({}))
    pick_port: Callable[[], int] = free_port

    @classmethod
    def create(cls, spec: ClusterSpec, workload: Workload, job_dir: str, job_id: str,
               device_ips: Optional[DeviceIps] = None) -> PlanFactory:
        ips = MappingProxyType({h: MappingProxyType(dict(d)) for h, d in (device_ips or {}).items()})
        return cls(spec=spec, workload=workload, backend=backend_for(spec.backend), job_dir=job_dir,
                   job_id=job_id, slots=tuple(place(spec, ips)), device_ips=ips)

    @property
    def stage(self) -> str:
        return self.workload.stage

    def for_workload(self, workload: Workload) -> PlanFactory:
        """The factory of another stage of the same job (same hosts, placement and job)."""
        return dataclasses.replace(self, workload=workload)

    def with_spec(self, spec: ClusterSpec) -> PlanFactory:
        """The same factory for `spec` (hosts changed: an excluded host's ranks on a spare)."""
        return dataclasses.replace(self, spec=spec, backend=backend_for(spec.backend),
                                   slots=tuple(place(spec, self.device_ips)))

    def with_port_picker(self, pick_port: Callable[[], int]) -> PlanFactory:
        return dataclasses.replace(self, pick_port=pick_port)

    def __call__(self, attempt: int = 0, resume: Resume = None) -> LaunchPlan:
        spec = self.spec
        if spec.master.port == "auto":
            spec = with_master_port(spec, self.pick_port())
        return render_plan(spec, self.slots, self.workload, self.backend, self.job_dir, job_id=self.job_id,
                           attempt=attempt, resume=resume)
