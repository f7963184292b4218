"""What `refinenet-launch cluster` knows of each host, built from the host's one `glance` answer. Pure.

A host's answer (launcher/hostside/glance.py) holds its shared state's snapshot (leases, queue, cordon,
exclusion records, load, memory, free disk, its clock) and the raw output of the device tool; here it
becomes a `HostView`: per device its health verdict (the health parsers of launcher/health) and its
holder, slots used of `slots` on cpu hosts, the queue in order, the cooldown the launch policy
(`judge_host`) gives the exclusion records, and every problem. Times stay on the host's clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError
from launcher.health.probes import DeviceReading, device_probe
from launcher.health.samples import plain
from launcher.health.verdicts import DeviceRow, Verdict, classify_devices
from launcher.sharing.policy import BadHostSettings, ExclusionRecord, HostVerdict, judge_host

__all__ = ["Holder", "DeviceView", "SlotsView", "DiskView", "Cooldown", "HostView", "ClusterView",
           "host_view", "unreachable_view", "lease_note", "HOST", "SPARE"]

HOST, SPARE = "host", "spare"

#: Host statuses, worst first: the one a host shows is the first that applies.
UNREACHABLE, UNHEALTHY, CORDONED, COOLING, IN_USE, FREE = (
    "unreachable", "unhealthy", "cordoned", "cooling down", "in use", "free")


@dataclass(frozen=True)
class Holder:
    """A live lease (or, in a queue, a waiting launch's ticket) as the host reports it."""

    job: str
    user: str
    since: float
    devices: Tuple[int, ...] = ()
    slots: int = 0
    launcher: str = ""
    launcher_pid: Optional[int] = None
    pid: Optional[int] = None
    key: Optional[float] = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Holder:
        return cls(job=str(doc.get("job", "?")), user=str(doc.get("user", "?")), since=float(doc["since"]),
                   devices=tuple(int(d) for d in doc.get("devices") or ()), slots=int(doc.get("slots") or 0),
                   launcher=str(doc.get("launcher") or ""), launcher_pid=doc.get("launcher_pid"),
                   pid=doc.get("pid"), key=doc.get("key"))


@dataclass(frozen=True)
class DeviceView:
    """One device: its verdict (None when devices are not probed) and who holds it (None: free)."""

    device: int
    verdict: Optional[Verdict]
    reasons: Tuple[str, ...] = ()
    holder: Optional[Holder] = None
    reading: Optional[DeviceReading] = None


@dataclass(frozen=True)
class SlotsView:
    """A cpu host's slots: `total` None when the cluster file gives the host no `slots`."""

    total: Optional[int]
    used: int
    holders: Tuple[Holder, ...] = ()


@dataclass(frozen=True)
class DiskView:
    """Free space of the filesystem holding `path` (`what`: "state dir" or "workdir")."""

    what: str
    path: str
    free_bytes: Optional[int] = None
    total_bytes: Optional[int] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class Cooldown:
    """The launch policy's verdict on the exclusion records: no new job until `until` (host clock)."""

    until: float
    remaining_s: float
    reason: str
    recent: int
    cordon_due: bool

    @property
    def active(self) -> bool:
        return self.remaining_s > 0


@dataclass(frozen=True)
class HostView:
    """One host or spare of the cluster file as its one answer shows it."""

    name: str
    address: str
    role: str
    unreachable: Optional[str] = None
    hostname: str = ""
    clock: Optional[float] = None
    state_dir: str = ""
    state_error: Optional[str] = None
    cordon: Optional[Mapping[str, Any]] = None
    exclusions: Tuple[Mapping[str, Any], ...] = ()
    cooldown: Optional[Cooldown] = None
    load: Optional[Tuple[float, ...]] = None
    memory: Optional[Mapping[str, int]] = None
    disks: Tuple[DiskView, ...] = ()
    devices: Tuple[DeviceView, ...] = ()
    slots: Optional[SlotsView] = None
    leases: Tuple[Holder, ...] = ()
    queue: Tuple[Holder, ...] = ()
    problems: Tuple[str, ...] = ()
    #: Why leases say nothing here (a cpu host without `slots`, or `sharing.leases` off), else "".
    lease_note: str = ""

    @property
    def cordoned(self) -> bool:
        return bool(self.cordon and self.cordon.get("cordoned"))

    @property
    def healthy(self) -> bool:
        return not self.problems and not any(d.verdict == Verdict.UNHEALTHY for d in self.devices)

    @property
    def ok(self) -> bool:
        """Reachable and healthy (cordoned or cooling down is not a fault)."""
        return self.unreachable is None and self.healthy

    @property
    def status(self) -> str:
        if self.unreachable is not None:
            return UNREACHABLE
        if not self.healthy:
            return UNHEALTHY
        if self.cordoned:
            return CORDONED
        if self.cooldown is not None and self.cooldown.active:
            return COOLING
        return IN_USE if self.leases else FREE

    def to_dict(self) -> Dict[str, Any]:
        data = plain(self)
        data.update(status=self.status, ok=self.ok, cordoned=self.cordoned)
        for device, view in zip(data["devices"], self.devices):
            device["verdict"] = view.verdict.value if view.verdict else None
        return data


@dataclass(frozen=True)
class ClusterView:
    """Every host and spare of a cluster file, in the file's order, read at `time` (this machine)."""

    cluster: str
    source: str
    time: float
    hosts: Tuple[HostView, ...]

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def exit_code(self) -> int:
        """0 every host reachable and healthy, 1 otherwise."""
        return 0 if self.ok else 1

    def to_dict(self) -> Dict[str, Any]:
        return {"cluster": self.cluster, "source": self.source, "time": self.time, "ok": self.ok,
                "hosts": [h.to_dict() for h in self.hosts]}


def unreachable_view(host, role: str, why: str) -> HostView:
    return HostView(name=host.name, address=host.address, role=role, unreachable=why)


def host_view(spec, host, role: str, answer: Mapping[str, Any]) -> HostView:
    """The view of `host` (a `HostSpec` of `spec`) from its glance answer."""
    problems: List[str] = []
    snapshot = answer.get("snapshot") or {}
    error = answer.get("state_error")
    if error:
        problems.append(f"shared state: {error.get('message')}")
    leases = tuple(Holder.from_json(d) for d in snapshot.get("leases") or ())
    queue = tuple(Holder.from_json(d) for d in snapshot.get("queue") or ())
    devices, tool_problems = _devices(spec, host, answer.get("tool"), leases)
    problems += tool_problems
    clock = snapshot.get("now")
    records = tuple(snapshot.get("exclusions") or ())
    return HostView(
        name=host.name, address=host.address, role=role, hostname=str(snapshot.get("host") or ""),
        clock=float(clock) if clock is not None else None,
        state_dir=str((snapshot.get("state_dir") or {}).get("path") or spec.state_dir(host)),
        state_error=error.get("message") if error else None, cordon=dict(snapshot.get("cordon") or {}),
        exclusions=records, cooldown=_cooldown(spec, host.name, records, clock),
        load=tuple(snapshot["load"]) if snapshot.get("load") else None, memory=snapshot.get("memory"),
        disks=_disks(snapshot.get("disk") or ()), devices=devices,
        slots=_slots(spec, host, leases) if snapshot else None, leases=leases, queue=queue,
        problems=tuple(problems),
        lease_note=lease_note(spec, host))


def _devices(spec, host, tool: Optional[Mapping[str, Any]],
             leases: Sequence[Holder]) -> Tuple[Tuple[DeviceView, ...], List[str]]:
    """The file's devices and any other device a lease holds, each with its verdict from the tool's
    output (None when not probed) and its holder; and the tool's problems."""
    if spec.device == "cpu":
        return (), []
    held = {d: h for h in leases for d in h.devices}
    wanted = sorted(set(host.devices) | set(held))
    unprobed = tuple(DeviceView(d, None, holder=held.get(d)) for d in wanted)
    probe = device_probe(spec.device)
    if probe is None or tool is None:
        return unprobed, []
    name = probe.tool
    if not tool.get("found"):
        return unprobed, [f"{name}: tool not found on the host"]
    if tool.get("timed_out"):
        return unprobed, [f"{name} did not finish in time"]
    if tool.get("code") != 0:
        lines = (str(tool.get("stderr") or "").strip() or str(tool.get("stdout") or "").strip()).splitlines()
        why = lines[-1] if lines else "no output"
        return unprobed, [f"{' '.join(tool.get('argv') or [name])} failed (exit {tool.get('code')}): {why}"]
    try:
        readings = probe.parse(host.name, str(tool.get("stdout") or ""))
    except HostError as exc:
        return unprobed, [exc.cause]
    rows: Sequence[DeviceRow] = classify_devices(wanted, readings, name)
    return tuple(DeviceView(r.device, r.verdict, r.reasons, held.get(r.device), r.reading) for r in rows), []


def _slots(spec, host, leases: Sequence[Holder]) -> Optional[SlotsView]:
    if spec.device != "cpu":
        return None
    holders = tuple(h for h in leases if h.slots)
    return SlotsView(host.slots, sum(h.slots for h in holders), holders)


def lease_note(spec, host) -> str:
    """Why jobs of this cluster file take no lease on `host` (so neither the view nor a drain sees them),
    or ""."""
    if not spec.sharing.leases:
        return "sharing.leases is off: jobs of this cluster file take no lease"
    if spec.device == "cpu" and host.slots is None:
        return "no `slots` in the cluster file: jobs of this cluster file take no lease here"
    return ""


def _disks(entries: Sequence[Mapping[str, Any]]) -> Tuple[DiskView, ...]:
    out = []
    for i, d in enumerate(entries):
        out.append(DiskView("state dir" if i == 0 else "workdir", str(d.get("path")),
                            d.get("available_bytes"), d.get("total_bytes"), d.get("error")))
    return tuple(out)


def _cooldown(spec, name: str, records: Sequence[Mapping[str, Any]],
              clock: Optional[float]) -> Optional[Cooldown]:
    if not records:
        return None
    now = float(clock) if clock is not None else time.time()
    verdict: HostVerdict = judge_host(name, [ExclusionRecord.from_json(r) for r in records], now,
                                      BadHostSettings.of(spec.sharing))
    return Cooldown(until=verdict.skip_until, remaining_s=verdict.remaining_s, reason=verdict.reason,
                    recent=verdict.recent, cordon_due=verdict.cordon)
