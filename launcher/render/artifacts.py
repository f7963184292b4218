"""Rendered artifacts shared by backends: the HCCL rank table, the OpenMPI hostfile, a job's host folder."""
from __future__ import annotations

import posixpath
import re
from typing import Any, Dict, Sequence

from launcher.errors import BadInput
from launcher.placement import RankSlot
from launcher.render.quoting import template
from launcher.spec.model import ClusterSpec, HostSpec

__all__ = ["render_rank_table", "render_hostfile", "host_job_dir", "JOB_ID", "RANK_TABLE", "HOSTFILE",
           "MSRUN_ENTRY"]

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RANK_TABLE = "rank_table.json"
HOSTFILE = "hostfile"
MSRUN_ENTRY = "msrun_entry.py"


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


