"""Cluster specs, plan factories, plans and failures for tests, built the way the launcher builds them."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from launcher.failures import Failure, FailureKind
from launcher.plan import LaunchPlan
from launcher.planning.factory import PlanFactory
from launcher.spec.load import parse_cluster
from launcher.spec.model import ClusterSpec
from launcher.workload import Workload, workload_for


def cluster_data(backend: str = "dynamic", device: str = "cpu",
                 hosts: Sequence[Union[str, Mapping[str, Any]]] = ("a", "b"), ranks: int = 1,
                 spares: Sequence[Union[str, Mapping[str, Any]]] = (), port: Optional[Union[int, str]] = 9000,
                 workdir: str = "/w", **top: Any) -> Dict[str, Any]:
    """A cluster file's data. Hosts named in `hosts` are SSH hosts on 10.0.0.1.., spares named in `spares`
    on the addresses after them, each with `ranks` ranks (cpu) or devices 0..ranks-1 and the workdir
    `workdir` (`{name}` in it is the host's name); a mapping is a host entry taken as it is. `port` is the
    master's (None: no `master`); other top-level fields from `top` (a section given as None counts as
    absent)."""
    def host(entry: Union[str, Mapping[str, Any]], address: str) -> Dict[str, Any]:
        if not isinstance(entry, str):
            return dict(entry)
        made: Dict[str, Any] = {"name": entry, "address": address, "ssh": {},
                                "workdir": workdir.format(name=entry)}
        if device == "cpu":
            made["ranks"] = ranks
        else:
            made["devices"] = list(range(ranks))
        return made

    data: Dict[str, Any] = {"name": "t", "backend": backend, "device": device,
                            "hosts": [host(h, f"10.0.0.{i + 1}") for i, h in enumerate(hosts)],
                            "job": {"data": "d.txt"}}
    if port is not None:
        data["master"] = {"port": port}
    if spares:
        data["spares"] = [host(s, f"10.0.0.{len(hosts) + i + 1}") for i, s in enumerate(spares)]
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
