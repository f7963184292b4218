"""Cluster specs, plan factories, plans and failures for tests, built the way the launcher builds them."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from launcher.failures import Failure, FailureKind
from launcher.plan import LaunchPlan
from launcher.planning.factory import PlanFactory
from launcher.spec.load import parse_cluster
from launcher.spec.model import ClusterSpec
from launcher.workload import Workload, workload_for


def cluster_data(backend: str = "dynamic", device: str = "cpu", hosts: Sequence[str] = ("a", "b"),
                 ranks: int = 1, spares: Sequence[str] = (), port: Union[int, str] = 9000,
                 workdir: str = "/w", **top: Any) -> Dict[str, Any]:
    """A cluster file's data: SSH hosts `hosts` on 10.0.0.1.. (spares on 10.0.1.1..), each with `ranks`
    ranks (cpu) or devices 0..ranks-1; other top-level fields from `top`."""
    def host(name: str, address: str) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"name": name, "address": address, "ssh": {}, "workdir": workdir}
        if device == "cpu":
            entry["ranks"] = ranks
        else:
            entry["devices"] = list(range(ranks))
        return entry

    data: Dict[str, Any] = {"name": "t", "backend": backend, "device": device, "master": {"port": port},
                            "hosts": [host(h, f"10.0.0.{i + 1}") for i, h in enumerate(hosts)],
                            "job": {"data": "d.txt"}}
    if spares:
        data["spares"] = [host(s, f"10.0.1.{i + 1}") for i, s in enumerate(spares)]
    data.update(top)
    return data


def spec_of(data: Optional[Mapping[str, Any]] = None, source: str = "t.yaml", **kw: Any) -> ClusterSpec:
    """A validated spec of `data`, or of `cluster_data(**kw)`."""
    return parse_cluster(dict(data) if data is not None else cluster_data(**kw), source)


def factory_of(spec: ClusterSpec, what: Union[str, Workload] = "r1", job_dir: str = "/jobs/j",
               job_id: str = "j", device_ips: Optional[Mapping[str, Mapping[int, str]]] = None
               ) -> PlanFactory:
    """The plan factory of a stage (`r1`) or a workload on `spec`."""
    workload = workload_for(what) if isinstance(what, str) else what
    return PlanFactory.create(spec, workload, job_dir, job_id, device_ips)


def plan_of(spec: ClusterSpec, what: Union[str, Workload] = "r1", attempt: int = 0, resume=None,
            job_dir: str = "/jobs/j", job_id: str = "j") -> LaunchPlan:
    """The rendered plan of attempt `attempt`."""
    return factory_of(spec, what, job_dir, job_id)(attempt, resume)


def failure(rank: Optional[int], host: str, code: Optional[int] = 1, *, kind: FailureKind = FailureKind.EXIT,
            time: Optional[float] = None, reason: str = "", who: str = "") -> Failure:
    """A failure as the attempt records one (`exit code N` unless `reason` says otherwise)."""
    return Failure(kind, host, reason or (f"exit code {code}" if code is not None else "failed"), rank=rank,
                   who=who, exit_code=code if kind == FailureKind.EXIT else None, time=time)
