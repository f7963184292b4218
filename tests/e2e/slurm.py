"""A real Slurm cluster that tests own: one slurmctld and N slurmd nodes, each node in its own namespaces.

Every node `nI` runs one `slurmd -D` in its own network namespace (a veth on a private bridge, address
`NET.(10+I)`), its own UTS namespace (hostname `nI`) and its own mount namespace (a private `/etc/hosts`
bind-mounted there only). slurmctld runs in the root namespace on the bridge address `NET.1`, and a private
munged (own key, own socket under /run) authenticates them, so nothing in /etc or /run/munge is touched.
Nodes share the filesystem and the PID space with the tests, as nodes on shared storage would.

Every daemon is a child process held by `SlurmCluster` and ended by `stop()`, together with every process
left in the node namespaces (job steps, tasks), the namespaces and the bridge. One lock per bridge name
keeps two live clusters from using the same names; a later `start()` with those names cleans up what a
crashed run left behind. Needs root and the Debian packages munge, slurmctld, slurmd, slurm-client.

Usage outside pytest (e.g. a benchmark)::

    with SlurmCluster(root / "slurm") as cluster:
        cluster.run("srun", "-N2", "-n2", "hostname").stdout   # "n1\\nn2\\n" in some order
        cluster.node_addr("n2")                                  # "10.200.0.12"
        subprocess.run(["sbatch", ...], env=cluster.env)         # env carries SLURM_CONF
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

SETUP_HINT = "run `make system` (it installs munge slurmctld slurmd slurm-client)"
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "squeue", "scancel",
            "scontrol", "nsenter", "unshare", "ip")
RUNTIME_BASE = Path("/run/refinenet-slurm")
SLURMD_PORT = 6818
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class SlurmMissing(RuntimeError):
    """A program the Slurm test cluster needs is not installed."""


class SlurmClusterError(RuntimeError):
    """The Slurm test cluster could not be set up."""


def require(program: str) -> str:
    """Absolute path of `program`, or `SlurmMissing` naming it and how to install it."""
    path = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not path:
        raise SlurmMissing(f"{program} is not installed; {SETUP_HINT}")
    return path


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SlurmClusterError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _used_networks(except_link: str) -> List[ipaddress.IPv4Network]:
    nets = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] != except_link:
            nets.append(ipaddress.ip_interface(fields[3]).network)
    return nets


def _clashes(net: str, used: List[ipaddress.IPv4Network]) -> bool:
    mine = ipaddress.ip_network(f"{net}.0/24")
    return any(mine.overlaps(other) for other in used)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(pids: List[int]) -> List[int]:
    parents: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(pids)
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: List[int], timeout: float) -> List[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _kill(pids: List[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class SlurmCluster:
    """A running Slurm cluster: `nodes` n1..nN, partition `debug`, clients configured through `env`."""

    partition = "debug"

    def __init__(self, root: Path, nodes: int = 2, net: Optional[str] = None, bridge: str = "rnbr0",
                 netns_prefix: str = "rnslurm", cluster_name: str = "rntest",
                 cpus_per_node: Optional[int] = None, kill_wait_s: int = 2, min_job_age_s: int = 300):
        if not 1 <= nodes <= 200:
            raise ValueError(f"nodes must be 1..200, not {nodes}")
        if len(bridge) > 15 or len(f"{netns_prefix}v{nodes}") > 15:
            raise ValueError(f"interface names from {bridge!r}/{netns_prefix!r} exceed 15 characters")
        self.root = Path(root).resolve()
        self.count = nodes
        self.requested_net = net
        self.net: Optional[str] = None
        self.bridge = bridge
        self.netns_prefix = netns_prefix
        self.cluster_name = cluster_name
        self.cpus_per_node = cpus_per_node or os.cpu_count() or 1
        self.kill_wait_s = kill_wait_s
        self.min_job_age_s = min_job_age_s
        self.nodes: List[str] = [f"n{i}" for i in range(1, nodes + 1)]
        self.controller = socket.gethostname().split(".")[0]
        self.runtime = RUNTIME_BASE / bridge
        self.conf = self.root / "etc" / "slurm.conf"
        self.hosts_file = self.root / "etc" / "hosts"
        self.log_dir = self.root / "log"
        self.munge_socket = self.runtime / "munge.sock"
        self.ctld_port: Optional[int] = None
        self.env: Dict[str, str] = {}
        self._lock = None
        self._munged: Optional[subprocess.Popen] = None
        self._ctld: Optional[subprocess.Popen] = None
        self._slurmd: Dict[str, subprocess.Popen] = {}

    # ----- names -----
    def netns(self, node: str) -> str:
        """The network namespace of `node` (`/run/netns/<name>`)."""
        return f"{self.netns_prefix}{self.nodes.index(node) + 1}"

    def _veth(self, index: int) -> str:
        return f"{self.netns_prefix}v{index}"

    def node_addr(self, node: str) -> str:
        """The IP address of `node` on the cluster bridge."""
        if self.net is None:
            raise SlurmClusterError("the cluster is not started")
        return f"{self.net}.{10 + self.nodes.index(node) + 1}"

    @property
    def controller_addr(self) -> str:
        return f"{self.net}.1"

    # ----- lifecycle -----
    def start(self) -> SlurmCluster:
        """Bring up munged, the bridge and node namespaces, slurmctld and every slurmd; wait until all nodes
        are idle. A failure stops what was started and raises with the relevant log."""
        for program in PROGRAMS:
            require(program)
        if os.geteuid() != 0:
            raise SlurmClusterError("a Slurm test cluster needs root (network, UTS and mount namespaces)")
        self._acquire_lock()
        try:
            self._clean_leftovers()
            self.net = self._pick_net()
            self._prepare_dirs()
            self._start_munged()
            self._setup_network()
            self._write_config()
            self._start_daemons()
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every job, every process in the node namespaces and every daemon; remove the namespaces,
        the bridge and the runtime directory. Safe to call more than once; a cluster that never took its
        names' lock touches nothing."""
        if self._lock is None:
            return
        if self._ctld is not None and self._ctld.poll() is None and self.env:
            try:
                self.cancel_all(timeout=self.kill_wait_s + 3.0)
            except (OSError, subprocess.SubprocessError):
                pass
        held = [p for p in (*self._slurmd.values(), self._ctld) if p is not None]
        for proc in held:
            if proc.poll() is None:
                proc.terminate()
        self._kill_namespace_processes()
        for proc in held:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._slurmd, self._ctld = {}, None
        self._kill_namespace_processes()
        self._remove_network()
        if self._munged is not None:
            self._munged.terminate()
            try:
                self._munged.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._munged.kill()
                self._munged.wait()
            self._munged = None
        self._release_lock()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- clients -----
    def run(self, *argv: str, check: bool = False, timeout: float = 60.0, input: Optional[str] = None,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """Run a Slurm client (`sinfo`, `srun`, `sbatch`, `squeue`, `scancel`, `scontrol`, ...) against this
        cluster; text output captured."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout, input=input, cwd=cwd)

    def cancel_all(self, timeout: float = 15.0) -> None:
        """Cancel every job of this cluster and wait until squeue lists none, so that their srun clients
        hear of it and exit."""
        self.run("scancel", "--user", self._user, timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", timeout=timeout).stdout.strip():
                return
            time.sleep(0.05)

    def pids(self) -> List[int]:
        """Live pids of this cluster: the daemons held here and every process in the node namespaces."""
        held = [p.pid for p in (self._munged, self._ctld, *self._slurmd.values()) if p is not None]
        return sorted({p for p in held + self._namespace_pids() if _alive(p)})

    @property
    def _user(self) -> str:
        return pwd.getpwuid(os.getuid()).pw_name

    # ----- steps of start/stop -----
    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        while True:
            RUNTIME_BASE.mkdir(parents=True, exist_ok=True)
            try:
                lock = open(self._lock_path, "a+")
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise SlurmClusterError(f"another live Slurm test cluster uses bridge {self.bridge}; "
                                        f"choose other bridge/netns_prefix names") from None
            try:
                same = os.stat(self._lock_path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            lock.close()
        self._lock = lock
        self.runtime.mkdir(exist_ok=True)
        os.chmod(self.runtime, 0o755)

    @property
    def _lock_path(self) -> Path:
        return RUNTIME_BASE / f"{self.bridge}.lock"

    def _release_lock(self) -> None:
        if self._lock is None:
            return
        shutil.rmtree(self.runtime, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)
        try:
            RUNTIME_BASE.rmdir()
        except OSError:
            pass
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    @property
    def _state_file(self) -> Path:
        return self.runtime / "state.json"

    def _record(self) -> None:
        pids = [p.pid for p in (self._munged, self._ctld, *self._slurmd.values()) if p is not None]
        self._state_file.write_text(json.dumps({"root": str(self.root), "pids": pids}))

    def _clean_leftovers(self) -> None:
        """Remove what a crashed run with the same names left: its daemons, namespaces and bridge."""
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            state = {}
        marks = [str(self.runtime), state.get("root") or str(self.root)]
        stale = [p for p in state.get("pids", []) if _alive(p) and any(m in _cmdline(p) for m in marks)]
        stale += _descendants(stale)
        _kill(stale, signal.SIGKILL)
        _wait_gone(stale, STOP_TIMEOUT_S)
        self._kill_namespace_processes()
        self._remove_network()
        for path in self.runtime.iterdir():
            if path.is_file() or path.is_socket():
                path.unlink()

    def _pick_net(self) -> str:
        used = _used_networks(self.bridge)
        if self.requested_net is not None:
            if _clashes(self.requested_net, used):
                raise SlurmClusterError(f"network {self.requested_net}.0/24 is already used by another "
                                        f"interface (see `ip -br addr`); pass another net")
            return self.requested_net
        for second in range(200, 255):
            for third in range(0, 256):
                net = f"10.{second}.{third}"
                if not _clashes(net, used):
                    return net
        raise SlurmClusterError("no free 10.x.y.0/24 network for the Slurm test bridge")

    def _prepare_dirs(self) -> None:
        for sub in ("state", "log", "etc", "munge"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for sub in ("state", "log", "etc"):
            (self.root / sub).mkdir(parents=True)
        for node in self.nodes:
            shutil.rmtree(self.root / f"spool-{node}", ignore_errors=True)
        (self.root / "munge").mkdir(mode=0o700)

    def _start_munged(self) -> None:
        key = self.root / "munge" / "munge.key"
        subprocess.run([require("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        log = open(self.log_dir / "munged.log", "wb")
        self._munged = subprocess.Popen(
            [require("munged"), "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.runtime / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._record()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._munge_works():
            if self._munged.poll() is not None or time.monotonic() > deadline:
                raise SlurmClusterError(f"munged did not start: {self._tail(self.log_dir / 'munged.log')}")
            time.sleep(0.05)

    def _munge_works(self) -> bool:
        encode = subprocess.run(["munge", "-S", str(self.munge_socket), "-n"], capture_output=True)
        if encode.returncode != 0:
            return False
        return subprocess.run(["unmunge", "-S", str(self.munge_socket)], input=encode.stdout,
                              capture_output=True).returncode == 0

    def _setup_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.controller_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, node in enumerate(self.nodes, start=1):
            ns, veth = self.netns(node), self._veth(index)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.node_addr(node)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _remove_network(self) -> None:
        for index in range(1, self.count + 1):
            ns = f"{self.netns_prefix}{index}"
            if Path("/run/netns", ns).exists():
                _ip("netns", "del", ns, check=False)
            _ip("link", "del", self._veth(index), check=False)
        if _ip("link", "show", self.bridge, check=False).returncode == 0:
            _ip("link", "del", self.bridge, check=False)

    def _namespace_pids(self) -> List[int]:
        pids = []
        for index in range(1, self.count + 1):
            ns = f"{self.netns_prefix}{index}"
            if Path("/run/netns", ns).exists():
                out = _ip("netns", "pids", ns, check=False).stdout
                pids += [int(p) for p in out.split() if p.isdigit()]
        return pids

    def _kill_namespace_processes(self) -> None:
        pids = [p for p in self._namespace_pids() if _alive(p)]
        if not pids:
            return
        _kill(pids, signal.SIGTERM)
        left = _wait_gone(pids, 2.0)
        _kill(left, signal.SIGKILL)
        _wait_gone(left, STOP_TIMEOUT_S)

    def _write_config(self) -> None:
        self.hosts_file.write_text("\n".join(
            ["127.0.0.1 localhost", f"{self.controller_addr} {self.controller}",
             *(f"{self.node_addr(n)} {n}" for n in self.nodes), ""]))
        self.ctld_port = _free_port()
        root = self.root
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.controller}({self.controller_addr})",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={SLURMD_PORT}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool-%n'}",
            f"SlurmctldPidFile={self.runtime / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.runtime / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SwitchType=switch/none",
            "InactiveLimit=0",
            f"KillWait={self.kill_wait_s}",
            f"MinJobAge={self.min_job_age_s}",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "Waittime=0",
            *(f"NodeName={n} NodeHostname={n} NodeAddr={self.node_addr(n)} CPUs={self.cpus_per_node} "
              f"RealMemory=1000 State=UNKNOWN" for n in self.nodes),
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start_daemons(self) -> None:
        log = open(self.log_dir / "slurmctld.out", "wb")
        self._ctld = subprocess.Popen([require("slurmctld"), "-D", "-i", "-f", str(self.conf)], env=self.env,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._record()
        self._wait_ctld_listening()
        for node in self.nodes:
            script = (f"hostname {node} && mount --bind {self.hosts_file} /etc/hosts && "
                      f"exec {require('slurmd')} -D -N {node} -f {self.conf}")
            log = open(self.log_dir / f"slurmd-{node}.out", "wb")
            self._slurmd[node] = subprocess.Popen(
                [require("nsenter"), f"--net=/run/netns/{self.netns(node)}", require("unshare"), "--uts",
                 "--mount", "--propagation", "private", "sh", "-c", script],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self._record()

    def _wait_ctld_listening(self) -> None:
        """Slurm clients and slurmd retry a refused connection only after a second; wait for the port."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_daemons()
            try:
                with socket.create_connection((self.controller_addr, self.ctld_port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.02)
        raise SlurmClusterError(f"slurmctld not listening on {self.controller_addr}:{self.ctld_port} after "
                                f"{START_TIMEOUT_S:.0f} s\n{self._tail(self.log_dir / 'slurmctld.log')}")

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        states = ""
        while time.monotonic() < deadline:
            self._check_daemons()
            result = self.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=10)
            states = result.stdout.strip() or result.stderr.strip()
            listed = dict(line.split() for line in result.stdout.splitlines() if len(line.split()) == 2)
            if result.returncode == 0 and sorted(listed) == sorted(self.nodes) \
                    and set(listed.values()) == {"idle"}:
                return
            time.sleep(0.05)
        raise SlurmClusterError(f"Slurm nodes not idle after {START_TIMEOUT_S:.0f} s: {states}\n"
                                f"{self._tail(self.log_dir / 'slurmctld.log')}")

    def _check_daemons(self) -> None:
        if self._ctld.poll() is not None:
            raise SlurmClusterError(f"slurmctld exited with {self._ctld.returncode}: "
                                    f"{self._tail(self.log_dir / 'slurmctld.log')}"
                                    f"{self._tail(self.log_dir / 'slurmctld.out')}")
        for node, proc in self._slurmd.items():
            if proc.poll() is not None:
                raise SlurmClusterError(f"slurmd of {node} exited with {proc.returncode}: "
                                        f"{self._tail(self.log_dir / f'slurmd-{node}.log')}"
                                        f"{self._tail(self.log_dir / f'slurmd-{node}.out')}")

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        except OSError:
            return ""
