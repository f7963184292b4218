"""Build the transport for a host of a cluster spec: local when it has no `ssh` section, SSH otherwise.

`host` is duck-typed: `name`, `address`, `ssh` (None, or an object with `user`, `port`, `key_file`,
`known_hosts`, `host_key_policy`, `connect_timeout_s`, `use_agent`), and optionally `python`, the
interpreter that runs the host program (`launcher.hostside`) there, and `srun` (the options that reach
a Slurm node). Unset (None) SSH settings take the defaults below.
"""
from __future__ import annotations

from launcher.transport.base import Transport
from launcher.transport.local import LocalTransport
from launcher.transport.ssh import DEFAULT_CONNECT_TIMEOUT_S, STRICT, SshTransport


def _setting(ssh, name: str, default):
    value = getattr(ssh, name, None)
    return default if value is None else value


def open_transport(host) -> Transport:
    """The transport for `host`; an SSH connection opens on first use, so this never blocks. A Slurm
    node (`host.srun` set) is reached through steps of the allocation."""
    srun = getattr(host, "srun", None)
    if srun:
        from launcher.slurm.transport import SlurmTransport

        return SlurmTransport(host.name, srun, getattr(host, "python", None) or "python3")
    ssh = getattr(host, "ssh", None)
    if ssh is None:
        return LocalTransport(host.name)
    return SshTransport(
        host.name, host.address,
        user=_setting(ssh, "user", None),
        port=_setting(ssh, "port", 22),
        key_file=_setting(ssh, "key_file", None),
        known_hosts=_setting(ssh, "known_hosts", None),
        host_key_policy=_setting(ssh, "host_key_policy", STRICT),
        connect_timeout_s=_setting(ssh, "connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S),
        use_agent=_setting(ssh, "use_agent", True),
        python=getattr(host, "python", None) or "python3",
    )
