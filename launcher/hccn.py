"""Device NIC addresses of Ascend hosts from `/etc/hccn.conf` (`address_<device id>=<ip>`).

Real files also carry `netmask_N`, `netdetect_N`, `gateway_N`, `send_arp_status_N`,
`tls_enable_N`, ...; only `address_N` matters for the rank table, everything else is ignored.
The file is read on its host through a caller-supplied `read_file(host, path)`, so the same code
serves a local read, a transport-backed read, and a folder of copies for `--dry-run`.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable, Dict, Mapping, Sequence

from launcher.backends.traits import uses_rank_table
from launcher.errors import ClusterFileError
from launcher.spec.model import ClusterSpec, HostSpec

ReadFile = Callable[[HostSpec, str], str]

_ADDRESS_LINE = re.compile(r"address_(\d+)\s*=\s*(\S*)\s*")


def parse_hccn_conf(text: str, source: str) -> Dict[int, str]:
    """Device id -> IP from the `address_N=IP` lines; unknown keys, blanks and comments are skipped."""
    addresses: Dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ADDRESS_LINE.fullmatch(stripped)
        if not m:
            continue
        device, ip = int(m.group(1)), m.group(2)
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ClusterFileError(source, f"line {lineno}",
                                   f"address_{device}={ip!r} is not an IP address") from None
        if device in addresses and addresses[device] != ip:
            raise ClusterFileError(source, f"line {lineno}",
                                   f"address_{device} is given twice ({addresses[device]} and {ip})")
        addresses[device] = ip
    return addresses


def ips_for_devices(host: HostSpec, table: Mapping[int, str], source: str, field: str,
                    devices: Sequence[int]) -> Dict[int, str]:
    """The addresses of `devices` from a parsed table; a device without one is an error naming all three."""
    out: Dict[int, str] = {}
    for d in devices:
        if d not in table:
            raise ClusterFileError(source, field,
                                   f"host {host.name}: device {d} has no address_{d} in {host.hccn_conf}")
        out[d] = table[d]
    return out


def needs_discovery(spec: ClusterSpec) -> bool:
    return uses_rank_table(spec.backend, spec.device) and any(h.device_ips is None for h in spec.hosts)


def discover_device_ips(spec: ClusterSpec, read_file: ReadFile) -> Dict[str, Dict[int, str]]:
    """Host name -> {device id: ip} read from each host's hccn.conf, for hosts without `device_ips`.

    Empty when the launch needs no rank table. `read_file` raises FileNotFoundError/OSError for a
    missing or unreadable file; that becomes a `ClusterFileError` naming the host and the file.
    """
    if not uses_rank_table(spec.backend, spec.device):
        return {}
    from launcher.fanout import fan_out

    todo = [(i, host) for i, host in enumerate(spec.hosts) if host.device_ips is None]
    texts = fan_out(lambda item: read_file(item[1], item[1].hccn_conf), todo, key=lambda item: item[0],
                    width=spec.launch.fanout, catch=(OSError,))
    found: Dict[str, Dict[int, str]] = {}
    for i, host in todo:
        slurm = spec.slurm is not None
        field = "slurm.hccn_conf" if slurm else f"hosts[{i}].hccn_conf"
        if i in texts.failed:
            exc = texts.failed[i]
            instead = "give --hccn-conf-dir" if slurm else f"give hosts[{i}].device_ips"
            raise ClusterFileError(spec.source, field,
                                   f"cannot read {host.hccn_conf} on host {host.name} to find the device IPs "
                                   f"({exc.strerror or exc}); {instead} instead") from None
        table = parse_hccn_conf(texts.succeeded[i], f"{host.hccn_conf} on host {host.name}")
        found[host.name] = ips_for_devices(host, table, spec.source, field, host.devices)
    return found
