"""Simulated hosts: real OpenSSH servers (tests/e2e/sshd.py) and a real Slurm cluster (tests/e2e/slurm.py),
how many the session fixtures start, and the OpenSSH client config that reaches them (pdsh, scp)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tests.e2e.slurm import SlurmCluster, SlurmMissing
from tests.e2e.sshd import (
    ClientKey,
    OpenSshMissing,
    SshAgent,
    SshHost,
    SshServer,
    free_port,
    login_home,
    require,
    start_servers,
    startup_trace,
    stop_servers,
)

__all__ = ["SlurmCluster", "SlurmMissing", "ClientKey", "OpenSshMissing", "SshAgent", "SshHost", "SshServer",
           "free_port", "login_home", "require", "start_servers", "startup_trace", "stop_servers",
           "SIMULATED_HOSTS", "SCALE_HOSTS", "ssh_config"]

#: The two hosts of the `ssh_servers` fixture: (name, loopback address).
SIMULATED_HOSTS = (("host-a", "127.0.0.2"), ("host-b", "127.0.0.3"))
#: How many hosts the `scale_servers` fixture starts (host-001 on 127.0.1.1 ...).
SCALE_HOSTS = 8


def ssh_config(path: Path, servers: Iterable[SshServer]) -> Path:
    """An OpenSSH client config naming each simulated host (an `SshServer`): its address, port, the test
    key and the known_hosts that trusts it; batch mode, one connection per session."""
    blocks = [f"Host {s.name}\n  HostName {s.address}\n  Port {s.port}\n  User {s.user}\n"
              f"  IdentityFile {s.client.private}\n  IdentitiesOnly yes\n"
              f"  UserKnownHostsFile {s.known_hosts}\n"
              f"  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 30\n  ControlMaster no\n"
              for s in servers]
    Path(path).write_text("\n".join(blocks))
    return Path(path)

