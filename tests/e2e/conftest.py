"""Fixtures for end-to-end tests, one per session each: simulated SSH hosts on real OpenSSH servers, a
Slurm cluster, the stand-in workload's `python`, a tiny synthetic training set, and an ssh-agent."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from tests.harness import standin
from tests.harness.data import TRAIN_LIST, make_dataset
from tests.harness.hosts import (
    SCALE_HOSTS,
    SIMULATED_HOSTS,
    ClientKey,
    SlurmCluster,
    SshAgent,
    SshHost,
    SshServer,
    start_servers,
    stop_servers,
)


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory) -> ClientKey:
    """The key the test client logs in with; every simulated host authorizes it."""
    return ClientKey.create(tmp_path_factory.mktemp("ssh-client"))


@pytest.fixture(scope="session")
def ssh_servers(tmp_path_factory, ssh_client_key) -> List[SshServer]:
    """Two running sshd servers, 127.0.0.2 and 127.0.0.3, each with its own workdir; stopped at the end."""
    servers = []
    try:
        for name, address in SIMULATED_HOSTS:
            servers.append(SshServer(tmp_path_factory.mktemp(f"sshd-{name}"), name, address,
                                     ssh_client_key).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def ssh_hosts(ssh_servers) -> List[SshHost]:
    """The simulated hosts as cluster hosts (`name`, `address`, `ssh`, `workdir`, `python`)."""
    return [server.host() for server in ssh_servers]


@pytest.fixture
def ssh_agent(tmp_path, ssh_client_key) -> SshAgent:
    """A real ssh-agent holding the test client key; its socket is `ssh_agent.socket`."""
    with SshAgent(tmp_path / "agent", ssh_client_key.private) as agent:
        yield agent


@pytest.fixture(scope="session")
def scale_servers(tmp_path_factory, ssh_client_key) -> List[SshServer]:
    """SCALE_HOSTS running sshd servers, host-001 on 127.0.1.1 ..., each with its own workdir."""
    servers = start_servers(tmp_path_factory.mktemp("sshd-scale"), ssh_client_key, SCALE_HOSTS)
    try:
        yield servers
    finally:
        stop_servers(servers)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """A real 2-node Slurm cluster (n1, n2, partition `debug`); clients need `slurm_cluster.env`.
    Fails, naming the missing program, when the Slurm packages are not installed."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def standin_python(tmp_path_factory) -> str:
    """The `python` wrapper running the stand-in workload (tests/harness/standin.py) for training commands."""
    return standin.install(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A tiny synthetic VOC/SBD-layout dataset (12 images of at most 64 pixels) and its lists; read only."""
    return make_dataset(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def train_list(dataset) -> Path:
    """The training list of `dataset` (6 images)."""
    return dataset / TRAIN_LIST
