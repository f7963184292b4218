"""The cluster file: YAML validated into frozen dataclasses, every error naming its field path.

`load_cluster` reads one file (its only I/O); `parse_cluster` validates an already loaded mapping.
The schema is documented field by field in docs/cluster-config.md. Unknown keys are errors, so a
misspelt option never silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import getpass
import ipaddress
import os
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from launcher.errors import ClusterFileError

__all__ = [
    "BACKENDS", "DEVICES", "STAGES", "TRAIN_STAGES", "RESERVED_ENV", "ClusterSpec", "HostSpec", "SshSpec",
    "MasterSpec", "SlurmSpec", "JobSpec", "RestartPolicy", "HealthPolicy", "TimeoutSpec", "load_cluster",
    "parse_cluster", "apply_overrides", "parse_override", "normalize_option", "uses_rank_table",
]

BACKENDS = ("rank_table", "msrun", "mpirun", "dynamic", "slurm")
#: How ranks form a cluster under `backend: slurm` (`slurm.ranks_with`).
SLURM_RANK_BACKENDS = ("dynamic", "rank_table")
STORAGE = ("local", "shared")
DEVICES = ("ascend", "gpu", "cpu")
STAGES = ("r1", "r2", "eval", "export")
TRAIN_STAGES = ("r1", "r2")
HOST_KEY_POLICIES = ("strict", "accept-new")
DEFAULT_HCCN_CONF = "/etc/hccn.conf"
DEFAULT_OUTPUT_DIR = "output"

#: Variables the launcher sets itself (from the backend, placement and `timeouts`); `env` may not.
RESERVED_ENV = frozenset({
    "RANK_TABLE_FILE", "RANK_ID", "DEVICE_ID", "RANK_SIZE", "MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT",
    "MS_WORKER_NUM", "MS_NODE_ID", "LOCAL_RANK", "REFINENET_JOB_ID", "MS_TOPO_TIMEOUT", "MS_NODE_TIMEOUT",
    "REFINENET_STORAGE",
})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ADDRESS = re.compile(r"(?!-)[A-Za-z0-9._:-]{1,253}")
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

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


@dataclass(frozen=True)
class HealthPolicy:
    """Preflight and periodic health checks; `hang_timeout_s` None disables hang detection.

    A rank whose step time stays above `straggler_factor` times the median of the others for
    `straggler_window` consecutive steps is reported as a straggler.
    """

    interval_s: float = 10.0
    hang_timeout_s: Optional[float] = None
    min_free_disk_gb: float = 1.0
    check_devices: bool = True
    preflight: bool = True
    straggler_factor: float = 1.5
    straggler_window: int = 5


@dataclass(frozen=True)
class TimeoutSpec:
    """Cluster formation (MS_TOPO_TIMEOUT), heartbeat (MS_NODE_TIMEOUT), and SIGTERM->SIGKILL grace."""

    cluster_s: int = 60
    heartbeat_s: int = 30
    stop_grace_s: float = 10.0


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


def uses_rank_table(backend: str, device: str) -> bool:
    """Whether a launch needs an HCCL rank table (and so the device IPs)."""
    return device == "ascend" and backend in ("rank_table", "msrun")


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


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


# ---------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loading that refuses a key given twice in one mapping."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ClusterFileError(source, "", f"not valid YAML: {exc}".replace("\n", " ")) from None


def load_cluster(path: Union[str, os.PathLike], overrides: Optional[Mapping[str, Any]] = None) -> ClusterSpec:
    """Read and validate a cluster file; `overrides` maps field paths (`hosts[0].device_ips`) to values."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ClusterFileError(source, "", f"cannot read: {exc.strerror or exc}") from None
    data = load_yaml(text, source)
    if overrides:
        data = apply_overrides(data, overrides, source)
    return parse_cluster(data, source)


# ---------------------------------------------------------------------------------------------
# Overrides: `hosts[0].device_ips=[...]`, `master.port=9000`

_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*")
_PATH_TOKEN = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


def _parse_path(text: str, source: str) -> List[Union[str, int]]:
    if not _PATH.fullmatch(text):
        raise ClusterFileError(source, text, "not a field path like hosts[0].device_ips or master.port")
    return [name if name else int(index) for name, index in _PATH_TOKEN.findall(text)]


def parse_override(text: str) -> Tuple[str, Any]:
    """`FIELD=VALUE` (VALUE read as YAML: `9000`, `[a, b]`, `auto`) -> (FIELD, value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ClusterFileError("--override", text, "expected FIELD=VALUE, e.g. master.port=9000")
    return key.strip(), load_yaml(raw, f"--override {key.strip()}")


def apply_overrides(data: Any, overrides: Mapping[str, Any], source: str) -> Any:
    """A copy of the loaded file with each override set at its field path (mappings created as needed)."""
    data = copy.deepcopy(data) if data is not None else {}
    for path_text, value in overrides.items():
        tokens = _parse_path(path_text, source)
        node = data
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            where = path_text if last else _render_path(tokens[: i + 1])
            if isinstance(tok, int):
                if not isinstance(node, list) or tok >= len(node):
                    raise ClusterFileError(source, where, f"--override {path_text}: no such list item")
            elif not isinstance(node, dict):
                raise ClusterFileError(source, where, f"--override {path_text}: not inside a mapping")
            if last:
                node[tok] = value
            else:
                if isinstance(tok, str) and node.get(tok) is None:
                    node[tok] = [] if isinstance(tokens[i + 1], int) else {}
                node = node[tok]
    return data


def _render_path(tokens: Sequence[Union[str, int]]) -> str:
    out = ""
    for tok in tokens:
        out += f"[{tok}]" if isinstance(tok, int) else (f".{tok}" if out else tok)
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _sub(parent: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class _Checker:
    """Field readers that raise `ClusterFileError(source, field path, problem)`."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> ClusterFileError:
        return ClusterFileError(self.source, where, problem)

    def mapping(self, value: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where or "(top level)", f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(_sub(where, str(key)), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if value.get(key) is None:
                raise self.fail(_sub(where, key), "required")
        return value

    def string(self, value: Any, where: str, pattern: Optional[re.Pattern] = None, what: str = "") -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        text = str(value)
        if not text:
            raise self.fail(where, "must not be empty")
        if "\0" in text:
            raise self.fail(where, "contains a NUL character")
        if pattern is not None and not pattern.fullmatch(text):
            raise self.fail(where, f"{text!r} is not {what}")
        return text

    def opt_string(self, value: Any, where: str) -> Optional[str]:
        return None if value is None else self.string(value, where)

    def integer(self, value: Any, where: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {_kind(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(where, f"{value} is out of range (must be {bounds})")
        return value

    def number(self, value: Any, where: str, lo: float = 0.0, strict: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"expected a number, got {_kind(value)}")
        if value < lo or (strict and value == lo) or value != value:
            raise self.fail(where, f"{value} is out of range (must be {'>' if strict else '>='} {lo})")
        return float(value)

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_kind(value)}")
        return value

    def choice(self, value: Any, where: str, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def env(self, value: Any, where: str) -> Mapping[str, str]:
        if value is None:
            return _frozen({})
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping of variable names to values, got {_kind(value)}")
        out: Dict[str, str] = {}
        for name, val in value.items():
            key_where = _sub(where, str(name))
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise self.fail(key_where, f"{name!r} is not a valid environment variable name")
            if name in RESERVED_ENV:
                raise self.fail(key_where, "set by the launcher (from the backend, placement and timeouts); "
                                           "remove it here")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.fail(key_where, f"expected a string or number, got {_kind(val)}")
            text = str(val)
            if "\0" in text:
                raise self.fail(key_where, "contains a NUL character")
            out[name] = text
        return _frozen(out)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: f"the string {value!r}",
            int: f"the number {value}", float: f"the number {value}"}.get(type(value), type(value).__name__)


_TOP_KEYS = ("name", "backend", "device", "hosts", "master", "job", "restart", "health", "timeouts", "env",
             "launch", "spares", "slurm", "storage")
_SLURM_KEYS = ("partition", "nodes", "ranks_per_node", "devices", "time_limit", "account", "sbatch_options",
               "srun_options", "python", "workdir", "ranks_with", "hccn_conf")
_TIME_LIMIT = re.compile(r"UNLIMITED|infinite|\d+(?::\d{1,2}){0,2}|\d+-\d{1,2}(?::\d{1,2}){0,2}")
_HOST_KEYS = ("name", "address", "ssh", "devices", "ranks", "device_ips", "hccn_conf", "python", "workdir",
              "env")
_SSH_KEYS = ("user", "port", "key_file", "known_hosts", "host_key_policy", "connect_timeout_s", "use_agent")
_JOB_KEYS = ("data", "val_data", "pretrained", "output_dir", "stage_overrides", "extra_args")


def parse_cluster(data: Any, source: str, *, cwd: Optional[str] = None,
                  local_python: Optional[str] = None) -> ClusterSpec:
    """Validate a loaded cluster file. Local hosts default to this interpreter and directory."""
    c = _Checker(source)
    top = c.mapping(data, "", _TOP_KEYS, required=("name", "backend", "device"))
    name = c.string(top["name"], "name", _NAME, "a name (letters, digits, '.', '_', '-'; at most 64)")
    backend = c.choice(top["backend"], "backend", BACKENDS)
    device = c.choice(top["device"], "device", DEVICES)
    if backend == "rank_table" and device != "ascend":
        raise c.fail("backend", "rank_table needs device ascend (HCCL rank tables are Ascend only)")
    env = c.env(top.get("env"), "env")
    storage = c.choice(top.get("storage", "local"), "storage", STORAGE)
    defaults = _LocalDefaults(cwd or os.getcwd(), local_python or sys.executable)

    slurm = None
    if backend == "slurm":
        slurm = _parse_slurm(c, top, device, defaults)
        backend = slurm.ranks_with
        hosts = slurm_placeholder_hosts(slurm)
    else:
        if top.get("slurm") is not None:
            raise c.fail("slurm", f"only for backend slurm (backend is {backend})")
        raw_hosts = top.get("hosts")
        if raw_hosts is None:
            raise c.fail("hosts", "required")
        if not isinstance(raw_hosts, list) or not raw_hosts:
            raise c.fail("hosts", "expected a non-empty list of hosts")
        hosts = tuple(_parse_host(c, raw, f"hosts[{i}]", device, defaults) for i, raw in enumerate(raw_hosts))
        _check_hosts(c, hosts, backend, device)
    raw_spares = top.get("spares")
    if raw_spares is not None and not isinstance(raw_spares, list):
        raise c.fail("spares", f"expected a list of hosts, got {_kind(raw_spares)}")
    spares = tuple(_parse_host(c, raw, f"spares[{i}]", device, defaults)
                   for i, raw in enumerate(raw_spares or ()))
    _check_spares(c, hosts, spares, backend, device)

    if slurm is not None and isinstance(top.get("master"), dict):
        for key in ("host", "addr"):
            if top["master"].get(key) is not None:
                raise c.fail(f"master.{key}", "not with backend slurm: the master is the first node of the "
                                              "allocation")
    master = _parse_master(c, top.get("master"), hosts)
    job = _parse_job(c, top.get("job"))
    restart = _parse_restart(c, top.get("restart"))
    health = _parse_health(c, top.get("health"))
    timeouts = _parse_timeouts(c, top.get("timeouts"))
    launch = _parse_launch(c, top.get("launch"))
    return ClusterSpec(name=name, backend=backend, device=device, hosts=hosts, master=master, job=job,
                       restart=restart, health=health, timeouts=timeouts, env=env, source=source,
                       launch=launch, spares=spares, slurm=slurm, storage=storage)


def _parse_slurm(c: _Checker, top: dict, device: str, defaults: _LocalDefaults) -> SlurmSpec:
    """The `slurm:` section; `hosts`, `spares` and `master.host` are the allocation's, so they are refused."""
    for key, why in (("hosts", "the hosts are the nodes of the Slurm allocation; set slurm.nodes instead"),
                     ("spares", "Slurm replaces nodes itself: submit again with more nodes instead")):
        if top.get(key) is not None:
            raise c.fail(key, f"not with backend slurm: {why}")
    s = c.mapping(top.get("slurm"), "slurm", _SLURM_KEYS, required=("nodes",))
    if not s:
        raise c.fail("slurm", "required for backend slurm (at least slurm.nodes)")
    nodes = c.integer(s["nodes"], "slurm.nodes", lo=1, hi=100000)
    if device == "cpu":
        if s.get("devices") is not None:
            raise c.fail("slurm.devices", "device cpu has no device ids: give `ranks_per_node: N`")
        if s.get("ranks_per_node") is None:
            raise c.fail("slurm.ranks_per_node", "required for device cpu: the number of ranks on each node")
        devices = tuple(range(c.integer(s["ranks_per_node"], "slurm.ranks_per_node", lo=1, hi=4096)))
    else:
        if s.get("ranks_per_node") is not None:
            raise c.fail("slurm.ranks_per_node", f"device {device}: one rank per device, list them in "
                                                 f"slurm.devices")
        devices = _parse_devices(c, {"devices": s.get("devices")}, "slurm", device)
    ranks_with = c.choice(s.get("ranks_with", "rank_table" if device == "ascend" else "dynamic"),
                          "slurm.ranks_with", SLURM_RANK_BACKENDS)
    if ranks_with == "rank_table" and device != "ascend":
        raise c.fail("slurm.ranks_with", "rank_table needs device ascend (HCCL rank tables are Ascend only)")
    time_limit = None
    if s.get("time_limit") is not None:
        time_limit = c.string(s["time_limit"], "slurm.time_limit", _TIME_LIMIT,
                              "a Slurm time limit (MINUTES, HH:MM:SS, D-HH:MM:SS or UNLIMITED)")
    workdir = c.string(s.get("workdir", "."), "slurm.workdir")
    try:
        workdir.format(node="n")
    except (KeyError, IndexError, ValueError) as exc:
        raise c.fail("slurm.workdir", f"only {{node}} may be replaced in it ({exc!s})") from None
    workdir = os.path.normpath(os.path.join(defaults.cwd, os.path.expanduser(workdir)))
    hccn_conf = DEFAULT_HCCN_CONF
    if s.get("hccn_conf") is not None:
        if device != "ascend":
            raise c.fail("slurm.hccn_conf", "only for device ascend")
        hccn_conf = _abs_path(c, s["hccn_conf"], "slurm.hccn_conf")
    return SlurmSpec(
        nodes=nodes, devices=devices, ranks_with=ranks_with,
        python=c.string(s.get("python", defaults.python), "slurm.python"), workdir=workdir,
        partition=None if s.get("partition") is None else c.string(s["partition"], "slurm.partition", _NAME,
                                                                   "a partition name"),
        time_limit=time_limit,
        account=None if s.get("account") is None else c.string(s["account"], "slurm.account", _NAME,
                                                               "an account name"),
        sbatch_options=_option_list(c, s.get("sbatch_options"), "slurm.sbatch_options"),
        srun_options=_option_list(c, s.get("srun_options"), "slurm.srun_options"),
        hccn_conf=hccn_conf)


def _option_list(c: _Checker, raw: Any, where: str) -> Tuple[str, ...]:
    """Extra command-line options as a list of separate arguments, never one shell string."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of options, one argument per item (e.g. [--exclusive, "
                            f"--qos=high]), got {_kind(raw)}")
    items = tuple(c.string(a, _sub(where, i)) for i, a in enumerate(raw))
    if items and not items[0].startswith("-"):
        raise c.fail(_sub(where, 0), f"{items[0]!r} is not an option (options start with -)")
    return items


def slurm_placeholder_hosts(slurm: SlurmSpec) -> Tuple[HostSpec, ...]:
    """Stand-ins `node1..nodeN` for the allocation's nodes, until it is known (dry run outside one)."""
    return tuple(slurm_host(slurm, f"node{i + 1}", f"node{i + 1}", ()) for i in range(slurm.nodes))


def slurm_host(slurm: SlurmSpec, node: str, address: str, srun: Tuple[str, ...]) -> HostSpec:
    """The host of one allocated node."""
    return HostSpec(name=node, address=address, ssh=None, devices=slurm.devices, device_ips=None,
                    python=slurm.python, workdir=slurm.workdir.replace("{node}", node),
                    hccn_conf=slurm.hccn_conf, srun=srun)


def _check_spares(c: _Checker, hosts: Tuple[HostSpec, ...], spares: Tuple[HostSpec, ...], backend: str,
                  device: str) -> None:
    """Spares obey the rules of hosts, and no name or address (where it identifies a server) repeats."""
    if not spares:
        return
    _check_hosts(c, spares, backend, device, where="spares", head=hosts[0])
    names = {h.name for h in hosts}
    addresses = {h.address for h in hosts}
    for i, s in enumerate(spares):
        if s.name in names:
            raise c.fail(f"spares[{i}].name", f"{s.name!r} is also a host: a spare must be another host")
        if backend in ("rank_table", "msrun", "mpirun") and s.address in addresses:
            raise c.fail(f"spares[{i}].address", f"{s.address!r} is also a host's address")


def _parse_launch(c: _Checker, raw: Any) -> LaunchSpec:
    d = c.mapping(raw, "launch", ("fanout",))
    return LaunchSpec(fanout=c.integer(d.get("fanout", LaunchSpec.fanout), "launch.fanout", lo=1, hi=1024))


@dataclass(frozen=True)
class _LocalDefaults:
    cwd: str
    python: str


def _parse_host(c: _Checker, raw: Any, where: str, device: str, defaults: _LocalDefaults) -> HostSpec:
    h = c.mapping(raw, where, _HOST_KEYS)
    ssh = None if h.get("ssh") is None else _parse_ssh(c, h["ssh"], _sub(where, "ssh"))
    if ssh is None:
        address = c.string(h.get("address", "127.0.0.1"), _sub(where, "address"), _ADDRESS,
                           "a host name or IP address")
    else:
        if h.get("address") is None:
            raise c.fail(_sub(where, "address"), "required for a host reached over SSH")
        address = c.string(h["address"], _sub(where, "address"), _ADDRESS, "a host name or IP address")
    if h.get("name") is None:
        if not _NAME.fullmatch(address):
            raise c.fail(_sub(where, "name"), f"required: the address {address!r} is not usable as a name")
        name = address
    else:
        name = c.string(h["name"], _sub(where, "name"), _NAME,
                        "a host name (letters, digits, '.', '_', '-'; at most 64)")

    devices = _parse_devices(c, h, where, device)
    device_ips = None
    if h.get("device_ips") is not None:
        if device != "ascend":
            raise c.fail(_sub(where, "device_ips"), "only for device ascend")
        device_ips = _parse_device_ips(c, h["device_ips"], _sub(where, "device_ips"), len(devices))
    hccn_conf = DEFAULT_HCCN_CONF
    if h.get("hccn_conf") is not None:
        if device != "ascend":
            raise c.fail(_sub(where, "hccn_conf"), "only for device ascend")
        hccn_conf = _abs_path(c, h["hccn_conf"], _sub(where, "hccn_conf"))

    if ssh is None:
        python = c.string(h.get("python", defaults.python), _sub(where, "python"))
        workdir = c.string(h.get("workdir", "."), _sub(where, "workdir"))
        workdir = os.path.normpath(os.path.join(defaults.cwd, os.path.expanduser(workdir)))
    else:
        python = c.string(h.get("python", "python3"), _sub(where, "python"))
        if h.get("workdir") is None:
            raise c.fail(_sub(where, "workdir"), "required for a host reached over SSH (absolute path there)")
        workdir = _abs_path(c, h["workdir"], _sub(where, "workdir"))
    env = c.env(h.get("env"), _sub(where, "env"))
    return HostSpec(name=name, address=address, ssh=ssh, devices=devices, device_ips=device_ips,
                    hccn_conf=hccn_conf, python=python, workdir=workdir, env=env)


def _abs_path(c: _Checker, value: Any, where: str) -> str:
    text = c.string(value, where)
    if not text.startswith("/"):
        raise c.fail(where, f"{text!r} is not an absolute path")
    return posixpath.normpath(text)


def _parse_devices(c: _Checker, h: dict, where: str, device: str) -> Tuple[int, ...]:
    if device == "cpu":
        if h.get("devices") is not None:
            raise c.fail(_sub(where, "devices"), "device cpu has no device ids: give the number of ranks "
                                                  "on this host as `ranks: N`")
        if h.get("ranks") is None:
            raise c.fail(_sub(where, "ranks"), "required for device cpu: the number of ranks on this host")
        return tuple(range(c.integer(h["ranks"], _sub(where, "ranks"), lo=1, hi=4096)))
    if h.get("ranks") is not None:
        raise c.fail(_sub(where, "ranks"), f"device {device}: one rank per device, list them in `devices`")
    raw = h.get("devices")
    dwhere = _sub(where, "devices")
    if raw is None:
        raise c.fail(dwhere, f"required for device {device}: the device ids to use, e.g. [0, 1, 2, 3]")
    if not isinstance(raw, list):
        raise c.fail(dwhere, f"expected a list of device ids, got {_kind(raw)}")
    if not raw:
        raise c.fail(dwhere, "no devices: give at least one device id")
    seen: Dict[int, int] = {}
    for i, d in enumerate(raw):
        dev = c.integer(d, _sub(dwhere, i), lo=0, hi=1023)
        if dev in seen:
            raise c.fail(_sub(dwhere, i), f"device {dev} is listed twice (also at {_sub(dwhere, seen[dev])})")
        seen[dev] = i
    return tuple(raw)


def _parse_device_ips(c: _Checker, raw: Any, where: str, count: int) -> Tuple[str, ...]:
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of IP addresses, one per device, got {_kind(raw)}")
    if len(raw) != count:
        raise c.fail(where, f"{len(raw)} addresses for {count} devices: give one per device, in device order")
    ips = []
    for i, ip in enumerate(raw):
        text = c.string(ip, _sub(where, i))
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise c.fail(_sub(where, i), f"{text!r} is not an IP address") from None
        if text in ips:
            raise c.fail(_sub(where, i), f"{text} is given twice")
        ips.append(text)
    return tuple(ips)


def _parse_ssh(c: _Checker, raw: Any, where: str) -> SshSpec:
    s = c.mapping(raw, where, _SSH_KEYS)
    user = c.string(s["user"], _sub(where, "user"), _NAME, "a user name") if s.get("user") is not None \
        else getpass.getuser()
    key_file = c.opt_string(s.get("key_file"), _sub(where, "key_file"))
    known_hosts = c.opt_string(s.get("known_hosts"), _sub(where, "known_hosts"))
    return SshSpec(
        user=user,
        port=c.integer(s.get("port", 22), _sub(where, "port"), lo=1, hi=65535),
        key_file=os.path.expanduser(key_file) if key_file else None,
        known_hosts=os.path.expanduser(known_hosts) if known_hosts else None,
        host_key_policy=c.choice(s.get("host_key_policy", "strict"), _sub(where, "host_key_policy"),
                                 HOST_KEY_POLICIES),
        connect_timeout_s=c.number(s.get("connect_timeout_s", 10.0), _sub(where, "connect_timeout_s"),
                                   strict=True),
        use_agent=c.boolean(s.get("use_agent", True), _sub(where, "use_agent")),
    )


def _check_hosts(c: _Checker, hosts: Tuple[HostSpec, ...], backend: str, device: str, where: str = "hosts",
                 head: Optional[HostSpec] = None) -> None:
    """Names (and, where a backend identifies servers by address, addresses) unique in `where`; for
    mpirun every host like `head` (default the first of them; hosts[0] for spares)."""
    names: Dict[str, int] = {}
    addresses: Dict[str, int] = {}
    unique_addresses = backend in ("rank_table", "msrun", "mpirun")
    for i, h in enumerate(hosts):
        if h.name in names:
            raise c.fail(f"{where}[{i}].name", f"duplicate host {h.name!r} (also {where}[{names[h.name]}])")
        names[h.name] = i
        if unique_addresses and h.address in addresses:
            raise c.fail(f"{where}[{i}].address",
                         f"duplicate address {h.address!r} (also {where}[{addresses[h.address]}]): backend "
                         f"{backend} identifies a server by its address; put its devices on one host")
        addresses.setdefault(h.address, i)
    if backend == "mpirun":
        head = head or hosts[0]
        for i, h in enumerate(hosts):
            if h is head:
                continue
            for attr in ("python", "workdir"):
                if getattr(h, attr) != getattr(head, attr):
                    raise c.fail(f"{where}[{i}].{attr}",
                                 f"backend mpirun starts one command line on every host: "
                                 f"must equal hosts[0].{attr} ({getattr(head, attr)!r})")
            if device != "cpu" and h.devices != head.devices:
                raise c.fail(f"{where}[{i}].devices",
                             "backend mpirun gives every host the same visible devices: "
                             "must equal hosts[0].devices")
        for i, h in enumerate(hosts):
            if h.env:
                raise c.fail(f"{where}[{i}].env", "backend mpirun forwards one environment to every rank: "
                                                  "put these variables in the top-level env")


def host_order(hosts: Sequence[HostSpec]) -> List[HostSpec]:
    """Hosts in rank order: the HCCL rule, dictionary order of the server id (the address), then name."""
    return sorted(hosts, key=lambda h: (h.address, h.name))


def _parse_master(c: _Checker, raw: Any, hosts: Tuple[HostSpec, ...]) -> MasterSpec:
    m = c.mapping(raw, "master", ("addr", "port", "host"))
    port: Union[int, str] = m.get("port", "auto")
    if isinstance(port, str) and port != "auto":
        raise c.fail("master.port", f"{port!r} is neither a port number nor auto")
    if port != "auto":
        port = c.integer(port, "master.port", lo=1, hi=65535)
    by_name = {h.name: h for h in hosts}
    ordered = host_order(hosts)
    if m.get("host") is not None:
        hname = c.string(m["host"], "master.host")
        if hname not in by_name:
            raise c.fail("master.host", f"no host named {hname!r} (hosts: {', '.join(by_name)})")
        host = by_name[hname]
    elif m.get("addr") is not None:
        addr = c.string(m["addr"], "master.addr", _ADDRESS, "a host name or IP address")
        host = next((h for h in ordered if h.address == addr), ordered[0])
    else:
        host = ordered[0]
    addr = c.string(m.get("addr", host.address), "master.addr", _ADDRESS, "a host name or IP address")
    return MasterSpec(addr=addr, port=port, host=host.name)


def _parse_job(c: _Checker, raw: Any) -> JobSpec:
    j = c.mapping(raw, "job", _JOB_KEYS)
    output_dir = c.string(j.get("output_dir", DEFAULT_OUTPUT_DIR), "job.output_dir")
    overrides = {}
    raw_over = j.get("stage_overrides")
    if raw_over is not None:
        so = c.mapping(raw_over, "job.stage_overrides", STAGES)
        overrides = {stage: parse_stage_options(c, opts, f"job.stage_overrides.{stage}")
                     for stage, opts in so.items()}
    return JobSpec(
        data=c.opt_string(j.get("data"), "job.data"),
        val_data=c.opt_string(j.get("val_data"), "job.val_data"),
        pretrained=c.opt_string(j.get("pretrained"), "job.pretrained"),
        output_dir=output_dir,
        stage_overrides=_frozen(overrides),
        extra_args=_parse_extra_args(c, j.get("extra_args"), "job.extra_args"),
    )


def parse_stage_options(c: _Checker, raw: Any, where: str) -> Mapping[str, OptionValue]:
    """Option name -> value; names normalised to dashes, values scalars or lists of scalars."""
    if raw is None:
        return _frozen({})
    if not isinstance(raw, dict):
        raise c.fail(where, f"expected a mapping of option names to values, got {_kind(raw)}")
    out: Dict[str, OptionValue] = {}
    for key, value in raw.items():
        kw = _sub(where, str(key))
        if not isinstance(key, str) or not _OPTION.fullmatch(key):
            raise c.fail(kw, f"{key!r} is not an option name (letters, digits, '-', '_')")
        opt = normalize_option(key)
        if opt in out:
            raise c.fail(kw, f"option --{opt} is given twice")
        out[opt] = _option_value(c, value, kw)
    return _frozen(out)


def _option_value(c: _Checker, value: Any, where: str) -> OptionValue:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if "\0" in value:
            raise c.fail(where, "contains a NUL character")
        return value
    if isinstance(value, list):
        items = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise c.fail(_sub(where, i), f"expected a string or number, got {_kind(v)}")
            items.append(c.string(v, _sub(where, i)) if isinstance(v, str) else v)
        return tuple(items)
    raise c.fail(where, f"expected a value (string, number, true/false, null or a list), got {_kind(value)}")


def _parse_extra_args(c: _Checker, raw: Any, where: str) -> Tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            return tuple(shlex.split(raw))
        except ValueError as exc:
            raise c.fail(where, f"cannot split into arguments: {exc}") from None
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of arguments, got {_kind(raw)}")
    return tuple(c.string(a, _sub(where, i)) for i, a in enumerate(raw))


def _parse_restart(c: _Checker, raw: Any) -> RestartPolicy:
    r = c.mapping(raw, "restart", ("max_restarts", "backoff_s", "backoff_max_s", "backoff_factor",
                                   "exclude_after"))
    d = RestartPolicy()
    backoff = c.number(r.get("backoff_s", d.backoff_s), "restart.backoff_s")
    backoff_max = c.number(r.get("backoff_max_s", max(d.backoff_max_s, backoff)), "restart.backoff_max_s")
    if backoff_max < backoff:
        raise c.fail("restart.backoff_max_s", f"{backoff_max} is less than restart.backoff_s ({backoff})")
    return RestartPolicy(
        max_restarts=c.integer(r.get("max_restarts", d.max_restarts), "restart.max_restarts", lo=0),
        backoff_s=backoff, backoff_max_s=backoff_max,
        backoff_factor=c.number(r.get("backoff_factor", d.backoff_factor), "restart.backoff_factor", lo=1.0),
        exclude_after=c.integer(r.get("exclude_after", d.exclude_after), "restart.exclude_after", lo=0))


def _parse_health(c: _Checker, raw: Any) -> HealthPolicy:
    h = c.mapping(raw, "health", ("interval_s", "hang_timeout_s", "min_free_disk_gb", "check_devices",
                                  "preflight", "straggler_factor", "straggler_window"))
    d = HealthPolicy()
    hang = h.get("hang_timeout_s")
    return HealthPolicy(
        interval_s=c.number(h.get("interval_s", d.interval_s), "health.interval_s", strict=True),
        hang_timeout_s=None if hang is None else c.number(hang, "health.hang_timeout_s", strict=True),
        min_free_disk_gb=c.number(h.get("min_free_disk_gb", d.min_free_disk_gb), "health.min_free_disk_gb"),
        check_devices=c.boolean(h.get("check_devices", d.check_devices), "health.check_devices"),
        preflight=c.boolean(h.get("preflight", d.preflight), "health.preflight"),
        straggler_factor=c.number(h.get("straggler_factor", d.straggler_factor), "health.straggler_factor",
                                  lo=1.0, strict=True),
        straggler_window=c.integer(h.get("straggler_window", d.straggler_window), "health.straggler_window",
                                   lo=1))


def _parse_timeouts(c: _Checker, raw: Any) -> TimeoutSpec:
    t = c.mapping(raw, "timeouts", ("cluster_s", "heartbeat_s", "stop_grace_s"))
    d = TimeoutSpec()
    return TimeoutSpec(
        cluster_s=c.integer(t.get("cluster_s", d.cluster_s), "timeouts.cluster_s", lo=1),
        heartbeat_s=c.integer(t.get("heartbeat_s", d.heartbeat_s), "timeouts.heartbeat_s", lo=1),
        stop_grace_s=c.number(t.get("stop_grace_s", d.stop_grace_s), "timeouts.stop_grace_s", strict=True))


# ---------------------------------------------------------------------------------------------
# Changes after validation (command-line options)


def with_master_port(spec: ClusterSpec, port: int) -> ClusterSpec:
    return dataclasses.replace(spec, master=dataclasses.replace(spec.master, port=port))


def with_max_restarts(spec: ClusterSpec, max_restarts: int) -> ClusterSpec:
    return dataclasses.replace(spec, restart=dataclasses.replace(spec.restart, max_restarts=max_restarts))


def with_stage_options(spec: ClusterSpec, stage: str, settings: Sequence[str]) -> ClusterSpec:
    """Apply `--set KEY=VALUE` (VALUE read as a YAML scalar) on top of the stage's overrides."""
    c = _Checker("--set")
    raw: Dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise c.fail(item, "expected KEY=VALUE, e.g. epochs=3")
        parsed = load_yaml(value, f"--set {key}") if value else ""
        raw[key] = parsed
    added = parse_stage_options(c, raw, "")
    merged = dict(spec.job.stage_overrides.get(stage, {}))
    merged.update(added)
    stages = dict(spec.job.stage_overrides)
    stages[stage] = _frozen(merged)
    return dataclasses.replace(spec, job=dataclasses.replace(spec.job, stage_overrides=_frozen(stages)))

