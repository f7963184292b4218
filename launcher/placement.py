"""Placement: hosts x devices -> ordered rank slots. Pure.

Rank order follows the HCCL rule for multi-server rank tables: servers in dictionary order of
their server id (the host address; ties, possible only where a backend allows hosts to share an
address, broken by host name), devices in the order the host lists them. Node rank is the index
of the host in that order, local rank the index of the device on its host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from launcher.backends.traits import uses_rank_table
from launcher.errors import ClusterFileError
from launcher.spec.model import ClusterSpec, host_order

__all__ = ["RankSlot", "place"]


@dataclass(frozen=True)
class RankSlot:
    """Where one rank runs: its host (by name), the device on it, and that device's NIC address."""

    rank: int
    node_rank: int
    local_rank: int
    host: str
    device_id: int
    device_ip: Optional[str] = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "node_rank": self.node_rank, "local_rank": self.local_rank,
                "host": self.host, "device_id": self.device_id, "device_ip": self.device_ip}


def place(spec: ClusterSpec, device_ips_by_host: Optional[Mapping[str, Mapping[int, str]]] = None
          ) -> Tuple[RankSlot, ...]:
    """Every rank of the cluster in rank order.

    Device IPs come from each host's `device_ips` or, for hosts without, from
    `device_ips_by_host[host name][device id]` (see `launcher.hccn.discover_device_ips`). They are
    required only where the launch needs a rank table.
    """
    discovered = device_ips_by_host or {}
    need_ips = uses_rank_table(spec.backend, spec.device)
    index = {h.name: i for i, h in enumerate(spec.hosts)}
    slots = []
    rank = 0
    for node_rank, host in enumerate(host_order(spec.hosts)):
        if host.device_ips is not None:
            ips: Mapping[int, str] = dict(zip(host.devices, host.device_ips))
        else:
            ips = discovered.get(host.name, {})
        for local_rank, device in enumerate(host.devices):
            ip = ips.get(device)
            if need_ips and ip is None:
                raise ClusterFileError(
                    spec.source, f"hosts[{index[host.name]}].device_ips",
                    f"host {host.name}: no device IP for device {device} (give device_ips or let the "
                    f"launcher read {host.hccn_conf} on the host)")
            slots.append(RankSlot(rank, node_rank, local_rank, host.name, device, ip))
            rank += 1
    return tuple(slots)
