"""Load a cluster file: YAML validated into the frozen dataclasses of `launcher.spec.model`.

`load_cluster` reads one file (its only I/O); `parse_cluster` validates an already loaded mapping.
Unknown keys are errors, so a misspelt option never silently falls back to a default. The `slurm:`
section is read by `launcher.slurm.spec`; which stages `job.stage_overrides` may name is the
workload's to check (`Workload.check_spec`).
"""
from __future__ import annotations

import copy
import dataclasses
import getpass
import ipaddress
import os
import re
import shlex
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from launcher.backends.traits import BACKEND_NAMES, traits
from launcher.errors import ClusterFileError
from launcher.spec.fields import (
    ADDRESS,
    NAME,
    OPTION,
    Checker,
    LocalDefaults,
    abs_path,
    kind,
    parse_devices,
    sub,
)
from launcher.spec.model import (
    DEFAULT_HCCN_CONF,
    DEFAULT_OUTPUT_DIR,
    DEVICES,
    HOST_KEY_POLICIES,
    STORAGE,
    ClusterSpec,
    HealthPolicy,
    HostSpec,
    JobSpec,
    LaunchSpec,
    MasterSpec,
    OptionValue,
    RestartPolicy,
    SharingSpec,
    SshSpec,
    TimeoutSpec,
    frozen,
    host_order,
    normalize_option,
)


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


_TOP_KEYS = ("name", "backend", "device", "hosts", "master", "job", "restart", "health", "timeouts", "env",
             "sharing",
             "launch", "spares", "slurm", "storage")


_HOST_KEYS = ("name", "address", "ssh", "devices", "ranks", "device_ips", "hccn_conf", "python", "workdir",
              "slots", "state_dir",
              "env")


_SSH_KEYS = ("user", "port", "key_file", "known_hosts", "host_key_policy", "connect_timeout_s", "use_agent")


_JOB_KEYS = ("data", "val_data", "pretrained", "output_dir", "stage_overrides", "extra_args")


def parse_cluster(data: Any, source: str, *, cwd: Optional[str] = None,
                  local_python: Optional[str] = None) -> ClusterSpec:
    """Validate a loaded cluster file. Local hosts default to this interpreter and directory."""
    c = Checker(source)
    top = c.mapping(data, "", _TOP_KEYS, required=("name", "backend", "device"))
    name = c.string(top["name"], "name", NAME, "a name (letters, digits, '.', '_', '-'; at most 64)")
    backend = c.choice(top["backend"], "backend", BACKEND_NAMES)
    device = c.choice(top["device"], "device", DEVICES)
    if traits(backend).ascend_only and device != "ascend":
        raise c.fail("backend", f"{backend} needs device ascend (HCCL rank tables are Ascend only)")
    env = c.env(top.get("env"), "env")
    storage = c.choice(top.get("storage", "local"), "storage", STORAGE)
    defaults = LocalDefaults(cwd or os.getcwd(), local_python or sys.executable)

    slurm = None
    if traits(backend).allocation:
        from launcher.slurm.spec import parse_slurm, slurm_placeholder_hosts

        slurm = parse_slurm(c, top, device, defaults)
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
        raise c.fail("spares", f"expected a list of hosts, got {kind(raw_spares)}")
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
    sharing = _parse_sharing(c, top.get("sharing"))
    return ClusterSpec(name=name, backend=backend, device=device, hosts=hosts, master=master, job=job,
                       sharing=sharing, restart=restart, health=health, timeouts=timeouts, env=env,
                       source=source, launch=launch, spares=spares, slurm=slurm, storage=storage)


def _check_spares(c: Checker, hosts: Tuple[HostSpec, ...], spares: Tuple[HostSpec, ...], backend: str,
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
        if traits(backend).server_per_address and s.address in addresses:
            raise c.fail(f"spares[{i}].address", f"{s.address!r} is also a host's address")


def _parse_sharing(c: Checker, raw: Any) -> SharingSpec:
    keys = tuple(f.name for f in dataclasses.fields(SharingSpec))
    d = c.mapping(raw, "sharing", keys)
    base = SharingSpec()
    cooldown = c.number(d.get("cooldown_s", base.cooldown_s), "sharing.cooldown_s")
    cooldown_max = c.number(d.get("cooldown_max_s", max(base.cooldown_max_s, cooldown)),
                            "sharing.cooldown_max_s")
    if cooldown_max < cooldown:
        raise c.fail("sharing.cooldown_max_s", f"{cooldown_max} is less than sharing.cooldown_s ({cooldown})")
    return SharingSpec(
        state_dir=abs_path(c, d["state_dir"], "sharing.state_dir") if d.get("state_dir") is not None
        else base.state_dir,
        leases=c.boolean(d.get("leases", base.leases), "sharing.leases"),
        ignore_foreign_processes=c.boolean(d.get("ignore_foreign_processes", base.ignore_foreign_processes),
                                           "sharing.ignore_foreign_processes"),
        cooldown_s=cooldown, cooldown_max_s=cooldown_max,
        cooldown_factor=c.number(d.get("cooldown_factor", base.cooldown_factor), "sharing.cooldown_factor",
                                 lo=1.0),
        cordon_after=c.integer(d.get("cordon_after", base.cordon_after), "sharing.cordon_after", lo=0),
        window_s=c.number(d.get("window_s", base.window_s), "sharing.window_s", strict=True))


def _parse_launch(c: Checker, raw: Any) -> LaunchSpec:
    d = c.mapping(raw, "launch", ("fanout",))
    return LaunchSpec(fanout=c.integer(d.get("fanout", LaunchSpec.fanout), "launch.fanout", lo=1, hi=1024))


def _parse_host(c: Checker, raw: Any, where: str, device: str, defaults: LocalDefaults) -> HostSpec:
    h = c.mapping(raw, where, _HOST_KEYS)
    ssh = None if h.get("ssh") is None else _parse_ssh(c, h["ssh"], sub(where, "ssh"))
    if ssh is None:
        address = c.string(h.get("address", "127.0.0.1"), sub(where, "address"), ADDRESS,
                           "a host name or IP address")
    else:
        if h.get("address") is None:
            raise c.fail(sub(where, "address"), "required for a host reached over SSH")
        address = c.string(h["address"], sub(where, "address"), ADDRESS, "a host name or IP address")
    if h.get("name") is None:
        if not NAME.fullmatch(address):
            raise c.fail(sub(where, "name"), f"required: the address {address!r} is not usable as a name")
        name = address
    else:
        name = c.string(h["name"], sub(where, "name"), NAME,
                        "a host name (letters, digits, '.', '_', '-'; at most 64)")

    devices = parse_devices(c, h, where, device)
    device_ips = None
    if h.get("device_ips") is not None:
        if device != "ascend":
            raise c.fail(sub(where, "device_ips"), "only for device ascend")
        device_ips = _parse_device_ips(c, h["device_ips"], sub(where, "device_ips"), len(devices))
    hccn_conf = DEFAULT_HCCN_CONF
    if h.get("hccn_conf") is not None:
        if device != "ascend":
            raise c.fail(sub(where, "hccn_conf"), "only for device ascend")
        hccn_conf = abs_path(c, h["hccn_conf"], sub(where, "hccn_conf"))

    if ssh is None:
        python = c.string(h.get("python", defaults.python), sub(where, "python"))
        workdir = c.string(h.get("workdir", "."), sub(where, "workdir"))
        workdir = os.path.normpath(os.path.join(defaults.cwd, os.path.expanduser(workdir)))
    else:
        python = c.string(h.get("python", "python3"), sub(where, "python"))
        if h.get("workdir") is None:
            raise c.fail(sub(where, "workdir"), "required for a host reached over SSH (absolute path there)")
        workdir = abs_path(c, h["workdir"], sub(where, "workdir"))
    env = c.env(h.get("env"), sub(where, "env"))
    slots = None
    if h.get("slots") is not None:
        if device != "cpu":
            raise c.fail(sub(where, "slots"), f"only for device cpu (device {device} leases its devices)")
        slots = c.integer(h["slots"], sub(where, "slots"), lo=1, hi=65536)
        if slots < len(devices):
            raise c.fail(sub(where, "slots"), f"{slots} slots cannot hold this host's {len(devices)} ranks")
    state_dir = None
    if h.get("state_dir") is not None:
        state_dir = abs_path(c, h["state_dir"], sub(where, "state_dir"))
    return HostSpec(name=name, address=address, ssh=ssh, devices=devices, device_ips=device_ips,
                    slots=slots, state_dir=state_dir, hccn_conf=hccn_conf, python=python, workdir=workdir,
                    env=env)


def _parse_device_ips(c: Checker, raw: Any, where: str, count: int) -> Tuple[str, ...]:
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of IP addresses, one per device, got {kind(raw)}")
    if len(raw) != count:
        raise c.fail(where, f"{len(raw)} addresses for {count} devices: give one per device, in device order")
    ips = []
    for i, ip in enumerate(raw):
        text = c.string(ip, sub(where, i))
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise c.fail(sub(where, i), f"{text!r} is not an IP address") from None
        if text in ips:
            raise c.fail(sub(where, i), f"{text} is given twice")
        ips.append(text)
    return tuple(ips)


def _parse_ssh(c: Checker, raw: Any, where: str) -> SshSpec:
    s = c.mapping(raw, where, _SSH_KEYS)
    user = c.string(s["user"], sub(where, "user"), NAME, "a user name") if s.get("user") is not None \
        else getpass.getuser()
    key_file = c.opt_string(s.get("key_file"), sub(where, "key_file"))
    known_hosts = c.opt_string(s.get("known_hosts"), sub(where, "known_hosts"))
    return SshSpec(
        user=user,
        port=c.integer(s.get("port", 22), sub(where, "port"), lo=1, hi=65535),
        key_file=os.path.expanduser(key_file) if key_file else None,
        known_hosts=os.path.expanduser(known_hosts) if known_hosts else None,
        host_key_policy=c.choice(s.get("host_key_policy", "strict"), sub(where, "host_key_policy"),
                                 HOST_KEY_POLICIES),
        connect_timeout_s=c.number(s.get("connect_timeout_s", 10.0), sub(where, "connect_timeout_s"),
                                   strict=True),
        use_agent=c.boolean(s.get("use_agent", True), sub(where, "use_agent")),
    )


def _check_hosts(c: Checker, hosts: Tuple[HostSpec, ...], backend: str, device: str, where: str = "hosts",
                 head: Optional[HostSpec] = None) -> None:
    """Names (and, where a backend identifies servers by address, addresses) unique in `where`; for
    mpirun every host like `head` (default the first of them; hosts[0] for spares)."""
    names: Dict[str, int] = {}
    addresses: Dict[str, int] = {}
    unique_addresses = traits(backend).server_per_address
    for i, h in enumerate(hosts):
        if h.name in names:
            raise c.fail(f"{where}[{i}].name", f"duplicate host {h.name!r} (also {where}[{names[h.name]}])")
        names[h.name] = i
        if unique_addresses and h.address in addresses:
            raise c.fail(f"{where}[{i}].address",
                         f"duplicate address {h.address!r} (also {where}[{addresses[h.address]}]): backend "
                         f"{backend} identifies a server by its address; put its devices on one host")
        addresses.setdefault(h.address, i)
    if traits(backend).one_command_line:
        head = head or hosts[0]
        for i, h in enumerate(hosts):
            if h is head:
                continue
            for attr in ("python", "workdir"):
                if getattr(h, attr) != getattr(head, attr):
                    raise c.fail(f"{where}[{i}].{attr}",
                                 f"backend {backend} starts one command line on every host: "
                                 f"must equal hosts[0].{attr} ({getattr(head, attr)!r})")
            if device != "cpu" and h.devices != head.devices:
                raise c.fail(f"{where}[{i}].devices",
                             f"backend {backend} gives every host the same visible devices: "
                             "must equal hosts[0].devices")
        for i, h in enumerate(hosts):
            if h.env:
                raise c.fail(f"{where}[{i}].env", f"backend {backend} forwards one environment to every "
                                                  "rank: put these variables in the top-level env")


def _parse_master(c: Checker, raw: Any, hosts: Tuple[HostSpec, ...]) -> MasterSpec:
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
        addr = c.string(m["addr"], "master.addr", ADDRESS, "a host name or IP address")
        host = next((h for h in ordered if h.address == addr), ordered[0])
    else:
        host = ordered[0]
    addr = c.string(m.get("addr", host.address), "master.addr", ADDRESS, "a host name or IP address")
    return MasterSpec(addr=addr, port=port, host=host.name)


def _parse_job(c: Checker, raw: Any) -> JobSpec:
    j = c.mapping(raw, "job", _JOB_KEYS)
    output_dir = c.string(j.get("output_dir", DEFAULT_OUTPUT_DIR), "job.output_dir")
    overrides = {}
    raw_over = j.get("stage_overrides")
    if raw_over is not None:
        so = _stage_map(c, raw_over, "job.stage_overrides")
        overrides = {stage: parse_stage_options(c, opts, f"job.stage_overrides.{stage}")
                     for stage, opts in so.items()}
    return JobSpec(
        data=c.opt_string(j.get("data"), "job.data"),
        val_data=c.opt_string(j.get("val_data"), "job.val_data"),
        pretrained=c.opt_string(j.get("pretrained"), "job.pretrained"),
        output_dir=output_dir,
        stage_overrides=frozen(overrides),
        extra_args=_parse_extra_args(c, j.get("extra_args"), "job.extra_args"),
    )


def _stage_map(c: Checker, raw: Any, where: str) -> dict:
    """`job.stage_overrides`: stage name -> options (which stages exist is the workload's to check)."""
    if not isinstance(raw, dict):
        raise c.fail(where, f"expected a mapping of stage names to options, got {kind(raw)}")
    for key in raw:
        if not isinstance(key, str) or not NAME.fullmatch(key):
            raise c.fail(sub(where, str(key)), f"{key!r} is not a stage name")
    return raw


def parse_stage_options(c: Checker, raw: Any, where: str) -> Mapping[str, OptionValue]:
    """Option name -> value; names normalised to dashes, values scalars or lists of scalars."""
    if raw is None:
        return frozen({})
    if not isinstance(raw, dict):
        raise c.fail(where, f"expected a mapping of option names to values, got {kind(raw)}")
    out: Dict[str, OptionValue] = {}
    for key, value in raw.items():
        kw = sub(where, str(key))
        if not isinstance(key, str) or not OPTION.fullmatch(key):
            raise c.fail(kw, f"{key!r} is not an option name (letters, digits, '-', '_')")
        opt = normalize_option(key)
        if opt in out:
            raise c.fail(kw, f"option --{opt} is given twice")
        out[opt] = _option_value(c, value, kw)
    return frozen(out)


def _option_value(c: Checker, value: Any, where: str) -> OptionValue:
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
                raise c.fail(sub(where, i), f"expected a string or number, got {kind(v)}")
            items.append(c.string(v, sub(where, i)) if isinstance(v, str) else v)
        return tuple(items)
    raise c.fail(where, f"expected a value (string, number, true/false, null or a list), got {kind(value)}")


def _parse_extra_args(c: Checker, raw: Any, where: str) -> Tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            return tuple(shlex.split(raw))
        except ValueError as exc:
            raise c.fail(where, f"cannot split into arguments: {exc}") from None
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of arguments, got {kind(raw)}")
    return tuple(c.string(a, sub(where, i)) for i, a in enumerate(raw))


def _parse_restart(c: Checker, raw: Any) -> RestartPolicy:
    r = c.mapping(raw, "restart", ("max_restarts", "backoff_s", "backoff_max_s", "backoff_factor",
                                   "exclude_after", "warm_start"))
    d = RestartPolicy()
    backoff = c.number(r.get("backoff_s", d.backoff_s), "restart.backoff_s")
    backoff_max = c.number(r.get("backoff_max_s", max(d.backoff_max_s, backoff)), "restart.backoff_max_s")
    if backoff_max < backoff:
        raise c.fail("restart.backoff_max_s", f"{backoff_max} is less than restart.backoff_s ({backoff})")
    return RestartPolicy(
        max_restarts=c.integer(r.get("max_restarts", d.max_restarts), "restart.max_restarts", lo=0),
        backoff_s=backoff, backoff_max_s=backoff_max,
        backoff_factor=c.number(r.get("backoff_factor", d.backoff_factor), "restart.backoff_factor", lo=1.0),
        exclude_after=c.integer(r.get("exclude_after", d.exclude_after), "restart.exclude_after", lo=0),
        warm_start=c.boolean(r.get("warm_start", d.warm_start), "restart.warm_start"))


def _parse_health(c: Checker, raw: Any) -> HealthPolicy:
    h = c.mapping(raw, "health", ("interval_s", "hang_timeout_s", "startup_timeout_s", "min_free_disk_gb",
                                  "check_devices", "preflight", "straggler_factor", "straggler_window"))
    d = HealthPolicy()
    hang = h.get("hang_timeout_s")
    return HealthPolicy(
        interval_s=c.number(h.get("interval_s", d.interval_s), "health.interval_s", strict=True),
        hang_timeout_s=None if hang is None else c.number(hang, "health.hang_timeout_s", strict=True),
        startup_timeout_s=c.number(h.get("startup_timeout_s", d.startup_timeout_s),
                                   "health.startup_timeout_s", strict=True),
        min_free_disk_gb=c.number(h.get("min_free_disk_gb", d.min_free_disk_gb), "health.min_free_disk_gb"),
        check_devices=c.boolean(h.get("check_devices", d.check_devices), "health.check_devices"),
        preflight=c.boolean(h.get("preflight", d.preflight), "health.preflight"),
        straggler_factor=c.number(h.get("straggler_factor", d.straggler_factor), "health.straggler_factor",
                                  lo=1.0, strict=True),
        straggler_window=c.integer(h.get("straggler_window", d.straggler_window), "health.straggler_window",
                                   lo=1))


def _parse_timeouts(c: Checker, raw: Any) -> TimeoutSpec:
    t = c.mapping(raw, "timeouts", ("cluster_s", "heartbeat_s", "stop_grace_s", "save_s"))
    d = TimeoutSpec()
    return TimeoutSpec(
        cluster_s=c.integer(t.get("cluster_s", d.cluster_s), "timeouts.cluster_s", lo=1),
        heartbeat_s=c.integer(t.get("heartbeat_s", d.heartbeat_s), "timeouts.heartbeat_s", lo=1),
        stop_grace_s=c.number(t.get("stop_grace_s", d.stop_grace_s), "timeouts.stop_grace_s", strict=True),
        save_s=c.number(t.get("save_s", d.save_s), "timeouts.save_s", strict=True))


def with_master_port(spec: ClusterSpec, port: int) -> ClusterSpec:
    return dataclasses.replace(spec, master=dataclasses.replace(spec.master, port=port))


def with_max_restarts(spec: ClusterSpec, max_restarts: int) -> ClusterSpec:
    return dataclasses.replace(spec, restart=dataclasses.replace(spec.restart, max_restarts=max_restarts))


def with_stage_options(spec: ClusterSpec, stage: str, settings: Sequence[str]) -> ClusterSpec:
    """Apply `--set KEY=VALUE` (VALUE read as a YAML scalar) on top of the stage's overrides."""
    c = Checker("--set")
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
    stages[stage] = frozen(merged)
    return dataclasses.replace(spec, job=dataclasses.replace(spec.job, stage_overrides=frozen(stages)))
