"""The cluster file's data model: frozen dataclasses of a validated cluster file, and its constants.

Pure data (no I/O, no parsing): `launcher.spec.load` builds these from YAML, every error naming its
field path; the schema is documented field by field in docs/cluster-config.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

STORAGE = ("local", "shared")


DEVICES = ("ascend", "gpu", "cpu")


HOST_KEY_POLICIES = ("strict", "accept-new")


DEFAULT_HCCN_CONF = "/etc/hccn.conf"


DEFAULT_OUTPUT_DIR = "output"


#: Variables the launcher sets itself (from the backend, placement and `timeouts`); `env` may not.
RESERVED_ENV = frozenset({
    "RANK_TABLE_FILE", "RANK_ID", "DEVICE_ID", "RANK_SIZE", "MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT",
    "MS_WORKER_NUM", "MS_NODE_ID", "LOCAL_RANK", "REFINENET_JOB_ID", "MS_TOPO_TIMEOUT", "MS_NODE_TIMEOUT",
    "REFINENET_STORAGE", "REFINENET_SAVE_REQUEST", "REFINENET_COMPILE_CACHE",
})


Scalar = Union[str, int, float, bool, None]


OptionValue = Union[Scalar, Tuple[Union[str, int, float], ...]]


@dataclass(frozen=True)
class SshSpec:
    """How to reach a host over SSH. Unknown host keys are refused unless `host_key_policy` is accept-new."""

    user: str
    port: int = 22
    key_file: Optional[str] = None
    known_hosts: Optional[str] = None  # None: ~/.ssh/known_hosts
    host_key_policy: str = "strict"
    connect_timeout_s: float = 10.0
    use_agent: bool = True


@dataclass(frozen=True)
class HostSpec:
    """One machine of the cluster: where it is, which devices it gives the job, how ranks run there.

    `ssh` None means the launcher's own machine. On CPU `devices` are rank slots `0..ranks-1`.
    """

    name: str
    address: str
    ssh: Optional[SshSpec]
    devices: Tuple[int, ...]
    device_ips: Optional[Tuple[str, ...]]
    python: str
    workdir: str
    hccn_conf: str = DEFAULT_HCCN_CONF
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: A Slurm node: the `srun` options that run a command there, inside the job's allocation.
    srun: Optional[Tuple[str, ...]] = None
    #: cpu hosts: how many ranks the host takes at once, over every job (one slot per rank); None: no limit.
    slots: Optional[int] = None
    #: Where this host keeps its shared state (leases, queue, cordon); None: `sharing.state_dir`.
    state_dir: Optional[str] = None

    @property
    def is_local(self) -> bool:
        return self.ssh is None and self.srun is None


@dataclass(frozen=True)
class MasterSpec:
    """The rendezvous point (scheduler, msrun master): address, port or 'auto', the host running it."""

    addr: str
    port: Union[int, str]
    host: str


@dataclass(frozen=True)
class SlurmSpec:
    """`backend: slurm`: the allocation the job needs and how ranks run in it.

    The hosts are the allocation's nodes (known only inside it); `workdir` may hold `{node}`, replaced by
    each node's name. `ranks_with` is how the ranks form a cluster (MindSpore's dynamic cluster, or an
    HCCL rank table on Ascend).
    """

    nodes: int
    devices: Tuple[int, ...]
    python: str
    workdir: str
    ranks_with: str = "dynamic"
    partition: Optional[str] = None
    time_limit: Optional[str] = None
    account: Optional[str] = None
    sbatch_options: Tuple[str, ...] = ()
    srun_options: Tuple[str, ...] = ()
    hccn_conf: str = DEFAULT_HCCN_CONF
    #: `submit`: Slurm sends the launcher SIGUSR1 this long before the time limit, and the ranks save a
    #: checkpoint and stop (`refinenet-launch resume JOB` continues); 0: no such signal.
    save_before_s: int = 300


@dataclass(frozen=True)
class JobSpec:
    """Defaults of the workload commands; `stage_overrides[stage]` maps option names to values."""

    data: Optional[str] = None
    val_data: Optional[str] = None
    pretrained: Optional[str] = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    stage_overrides: Mapping[str, Mapping[str, OptionValue]] = field(
        default_factory=lambda: MappingProxyType({}))
    extra_args: Tuple[str, ...] = ()


@dataclass(frozen=True)
class RestartPolicy:
    """Restarts of the whole job after a failure, from the newest complete checkpoint, with backoff."""

    max_restarts: int = 0
    backoff_s: float = 5.0
    backoff_max_s: float = 60.0
    backoff_factor: float = 2.0
    #: A host that is the root cause this many failed attempts in a row is replaced by a spare (0: never).
    exclude_after: int = 2
    #: After a failure each host's agent keeps an interpreter per process slot with the workload imported,
    #: handed to the next attempt (launcher/hostside/warm.py); False: every attempt starts cold.
    warm_start: bool = True


@dataclass(frozen=True)
class HealthPolicy:
    """Preflight and periodic health checks; `hang_timeout_s` None disables hang detection. A rank that
    has not made its first step (start-up: imports, cluster formation, first graph compile) may be silent
    for `startup_timeout_s` (at least `hang_timeout_s`) instead.

    A rank whose step time stays above `straggler_factor` times the median of the others for
    `straggler_window` consecutive steps is reported as a straggler.
    """

    interval_s: float = 10.0
    hang_timeout_s: Optional[float] = None
    startup_timeout_s: float = 600.0
    min_free_disk_gb: float = 1.0
    check_devices: bool = True
    preflight: bool = True
    straggler_factor: float = 1.5
    straggler_window: int = 5


@dataclass(frozen=True)
class TimeoutSpec:
    """Cluster formation (MS_TOPO_TIMEOUT), heartbeat (MS_NODE_TIMEOUT), SIGTERM->SIGKILL grace, and how
    long the ranks may take to save a checkpoint and stop when asked (`stop --save`, SIGUSR1) before they
    are stopped without it."""

    cluster_s: int = 60
    heartbeat_s: int = 30
    stop_grace_s: float = 10.0
    save_s: float = 300.0


#: Where a host keeps the state every user of it shares, unless the cluster file says otherwise.
DEFAULT_STATE_DIR = "/var/tmp/refinenet-launch"


@dataclass(frozen=True)
class SharingSpec:
    """Hosts shared with other jobs and users (docs/sharing.md): leases on devices/slots, the wait queue,
    cordons and the memory of excluded hosts, all kept on the hosts in `state_dir`.

    `leases` off: no lease is taken (and none is looked at). `ignore_foreign_processes`: a device running a
    process outside any lease does not fail the preflight. A host excluded by a job is skipped by later
    jobs for `cooldown_s` (doubled by `cooldown_factor` per exclusion within `window_s`, at most
    `cooldown_max_s`) and cordoned when excluded `cordon_after` times within `window_s` (0: never).
    """

    state_dir: str = DEFAULT_STATE_DIR
    leases: bool = True
    ignore_foreign_processes: bool = False
    cooldown_s: float = 600.0
    cooldown_factor: float = 2.0
    cooldown_max_s: float = 6 * 3600.0
    cordon_after: int = 3
    window_s: float = 24 * 3600.0


@dataclass(frozen=True)
class LaunchSpec:
    """How the launcher works on many hosts: `fanout` hosts at once (host checks, agent starts, scans)."""

    fanout: int = 32


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster file."""

    name: str
    backend: str
    device: str
    hosts: Tuple[HostSpec, ...]
    master: MasterSpec
    job: JobSpec
    restart: RestartPolicy
    health: HealthPolicy
    timeouts: TimeoutSpec
    env: Mapping[str, str]
    source: str
    launch: LaunchSpec = LaunchSpec()
    #: Hosts standing by to take the ranks of an excluded host (same schema as `hosts`).
    spares: Tuple[HostSpec, ...] = ()
    #: `backend: slurm`: the allocation (then `backend` is how the ranks form a cluster, `slurm.ranks_with`,
    #: and `hosts` are placeholders until `launcher.slurm.allocation` binds the allocation's nodes).
    slurm: Optional[SlurmSpec] = None
    #: `shared`: every host sees the same output directory (one copy of each checkpoint, one resume scan);
    #: `local`: each host keeps its own copy.
    storage: str = "local"
    sharing: SharingSpec = SharingSpec()

    def state_dir(self, host: HostSpec) -> str:
        """Where `host` keeps its shared state."""
        return host.state_dir or self.sharing.state_dir

    def host(self, name: str) -> HostSpec:
        """The host or spare called `name`."""
        for h in (*self.hosts, *self.spares):
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def world_size(self) -> int:
        return sum(len(h.devices) for h in self.hosts)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (for job.json and plan.json)."""
        return _plain(self)


def normalize_option(name: str) -> str:
    """Option names are written `crop_size` or `crop-size`; the command line gets `--crop-size`."""
    return name.replace("_", "-")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


def host_order(hosts: Sequence[HostSpec]) -> List[HostSpec]:
    """Hosts in rank order: the HCCL rule, dictionary order of the server id (the address), then name."""
    return sorted(hosts, key=lambda h: (h.address, h.name))
