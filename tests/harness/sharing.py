"""Hosts shared by several launcher machines and users, and ranks that say when they hold which device.

`SharedHosts` starts `count` simulated SSH hosts (tests/e2e/sshd.py) under a folder every user can
traverse. Each host has its own state directory (mode 1777, as an administrator makes it: simulated
hosts share one kernel, so each needs its own), `devices` Ascend devices with device IPs (the
`rank_table` backend; no device tool is run: `health.check_devices: false`), and accepts the keys of
the `Machine`s given: a launcher machine is a user (this process's or another's), a HOME whose ~/.ssh
holds its own key and the hosts' keys, and a runs folder. Cluster files name no key or known_hosts
file, so each launcher logs in as its machine would.

Every rank runs tests/harness/occupant.py, which appends `start` and `end` records (job, host, device,
time) to one records file: `overlaps` finds two jobs on one device at once.
"""
from __future__ import annotations

import contextlib
import getpass
import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from launcher.hostside import hoststate
from tests.harness.clusters import cluster_file
from tests.harness.environment import child_env
from tests.harness.hosts import ClientKey, SshServer, start_servers, stop_servers
from tests.harness.launched import LaunchedJob
from tests.harness.users import User, python_wrapper, user_env

OCCUPANT = Path(__file__).resolve().with_name("occupant.py")
#: The Python that runs the ranks' program (and, for another user, the agents): every user can run it.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
#: Restart policy: none, unless a test asks.
NO_RESTARTS = {"max_restarts": 0, "backoff_s": 0.5, "backoff_max_s": 0.5}


@dataclass
class Machine:
    """A launcher machine: `user` (None: this process's), `home` with its ~/.ssh, and its runs folder."""

    name: str
    home: Path
    runs: Path
    user: Optional[User] = None
    key: Optional[ClientKey] = None
    python: str = sys.executable

    @property
    def login(self) -> str:
        return self.user.name if self.user else getpass.getuser()

    def env(self, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = child_env(base)
        env["HOME"] = str(self.home)
        return user_env(self.user, env) if self.user else env

    def wrap(self) -> List[str]:
        return self.user.argv([]) if self.user else []


def make_machine(root: Path, name: str, user: Optional[User] = None) -> Machine:
    """A machine under `root/name`: its HOME (`root/name/home`, or the user's own HOME) with its key in
    ~/.ssh (made when missing); the runs folder `root/name/runs`, owned by the machine's user."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    home = user.home if user else folder / "home"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    ssh.chmod(0o700)
    key = ClientKey.create(ssh)
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    python = sys.executable
    if user:
        python = python_wrapper(folder / "bin", user)
        user.own(ssh, folder)
    return Machine(name, home, runs, user, key, python)


@dataclass
class SharedHosts:
    """`count` sshd hosts on `base`1.. (`host-1` ...), each with its own state directory and `devices`
    Ascend devices; every machine of `machines` may log in."""

    root: Path
    machines: Sequence[Machine]
    count: int = 3
    base: str = "127.0.5."
    devices: int = 4
    servers: List[SshServer] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        self.records = self.root / "records.jsonl"
        self._jobs: List[LaunchedJob] = []

    def start(self) -> SharedHosts:
        logins: Dict[str, List[Path]] = {}
        for m in self.machines:
            logins.setdefault(m.login, []).append(m.key.public)
        client = ClientKey.create(self.root / "client")
        self.servers = start_servers(self.root / "sshd", client, self.count, base=self.base, name="host-{}",
                                     logins=logins)
        for server in self.servers:
            state = self.state_dir(server.name)
            state.mkdir(parents=True, exist_ok=True)
            state.chmod(0o1777)
        known = "".join(f"{s.known_hosts_name} {s.host_public_key()}\n" for s in self.servers)
        for m in self.machines:
            path = m.home / ".ssh" / "known_hosts"
            path.write_text(known)
            if m.user:
                m.user.own(path)
        self.records.touch()
        self.records.chmod(0o666)
        return self

    def stop(self) -> None:
        for job in self._jobs:
            job.close()
        stop_servers(self.servers)

    def __enter__(self) -> SharedHosts:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.servers]

    def server(self, name: str) -> SshServer:
        return next(s for s in self.servers if s.name == name)

    def state_dir(self, name: str) -> Path:
        return self.root / "state" / name

    # -- cluster files and launches

    def host_entry(self, machine: Machine, name: str, devices: Sequence[int],
                   **fields: Any) -> Dict[str, Any]:
        """The cluster-file entry of host `name` with `devices` for `machine` (its own workdir there)."""
        server = self.server(name)
        index = self.names.index(name)
        workdir = Path(server.workdir) / machine.name
        if not workdir.exists():
            workdir.mkdir(parents=True)
            if machine.user:
                machine.user.own(workdir)
        return {"name": name, "address": server.address,
                "ssh": {"user": machine.login, "port": server.port, "host_key_policy": "strict",
                        "connect_timeout_s": 10, "use_agent": False},
                "workdir": str(workdir), "python": machine.python if machine.user else sys.executable,
                "devices": list(devices), "device_ips": [f"10.{index}.{d}.1" for d in devices],
                "state_dir": str(self.state_dir(name)), **fields}

    def cluster(self, machine: Machine, job_id: str, devices: Mapping[str, Sequence[int]],
                spares: Mapping[str, Sequence[int]] = {}, **sections: Any) -> Path:
        """A cluster file of `machine` for job `job_id`: host name -> its devices (in host order), spares
        likewise; `sections` over these: no restarts, health without device tools."""
        folder = machine.runs.parent / "clusters"
        folder.mkdir(exist_ok=True)
        sections.setdefault("restart", NO_RESTARTS)
        sections["health"] = {"check_devices": False, **sections.get("health", {})}
        path = cluster_file(folder / f"{job_id}.yaml",
                            [self.host_entry(machine, n, d) for n, d in devices.items()],
                            spares=[self.host_entry(machine, n, d) for n, d in spares.items()],
                            name=job_id, backend="rank_table", device="ascend", job={},
                            timeouts={"stop_grace_s": 2}, **sections)
        if machine.user:
            machine.user.own(folder)
        return path

    def launch(self, machine: Machine, job_id: str, devices: Mapping[str, Sequence[int]], hold_s: float,
               *options: str, program: Sequence[str] = (), cluster: Optional[Path] = None,
               **sections: Any) -> LaunchedJob:
        """`refinenet-launch` of `machine` (its user, HOME and runs folder) for `job_id` on `devices`, every
        rank holding its device `hold_s` seconds (`program`: more occupant.py options)."""
        path = cluster or self.cluster(machine, job_id, devices, **sections)
        command = [SYSTEM_PYTHON, str(OCCUPANT), str(self.records), f"{hold_s:g}", *program]
        job = LaunchedJob(path, machine.runs, job_id, machine.env(), *options, "--", *command, stage=None,
                          wrap=machine.wrap(), python=machine.python)
        self._jobs.append(job)
        return job

    # -- what happened

    def read_records(self) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in self.records.read_text().splitlines() if line.strip()]

    def snapshot(self, name: str) -> Dict[str, Any]:
        """The state of host `name` as its users see it (hoststate's snapshot)."""
        return hoststate.snapshot(str(self.state_dir(name)))


def intervals(records: Iterable[Mapping[str, Any]]) -> Dict[Tuple[str, int], List[Tuple[float, float, str]]]:
    """(host, device) -> [(start, end, job)] of the ranks that started and ended or failed."""
    opened: Dict[int, Mapping[str, Any]] = {}
    found: Dict[Tuple[str, int], List[Tuple[float, float, str]]] = {}
    for r in sorted(records, key=lambda r: r["t"]):
        if r["event"] == "start":
            opened[r["pid"]] = r
        elif r["pid"] in opened:
            s = opened.pop(r["pid"])
            found.setdefault((s["host"], s["device"]), []).append((s["t"], r["t"], s["job"]))
    return found


def overlaps(records: Iterable[Mapping[str, Any]]) -> List[str]:
    """Every two jobs that held one device at once, as text (empty when none did)."""
    found = []
    for (host, device), spans in sorted(intervals(records).items()):
        for a, b in itertools.combinations(sorted(spans), 2):
            if a[2] != b[2] and b[0] < a[1]:
                found.append(f"{host} device {device}: {a[2]} [{a[0]:.3f}, {a[1]:.3f}] and "
                             f"{b[2]} [{b[0]:.3f}, {b[1]:.3f}]")
    return found


def shared_root(prefix: str) -> Path:
    """A new folder every user may traverse (sshd reads each user's keys as that user)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def shared_hosts(prefix: str, base: str, machines: Sequence[Tuple[str, Optional[User]]] = (
        ("laptop", None), ("desktop", None))) -> Iterator[SharedHosts]:
    """`SharedHosts` on addresses `base`1.. for launcher machines (name, user; None: this process's),
    under a new folder that goes with them."""
    root = shared_root(prefix)
    try:
        made = [make_machine(root, name, user) for name, user in machines]
        with SharedHosts(root, made, base=base) as hosts:
            yield hosts
    finally:
        remove(root)
