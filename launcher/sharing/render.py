"""The cluster view as text: one block per host, its devices in a compact line. Pure.

    cluster ssh-cpu (cluster_configs/ssh-cpu.yaml): 2 hosts, 1 spare, at 2026-01-02 10:00:00

    cpu-a (10.0.0.21)  host  in use
      load 0.52 0.31 0.20 | memory 3.1 of 15.6 GB free | disk free: state dir 40.2 GB, workdir 40.2 GB
      slots 2 of 4 used: job j1 of alice (2) since 10:00:01 (12m ago), launched from laptop pid 4242
      queue: 1. job j2 of bob (4 slots) waiting since 10:01:02 (11m ago)

Times are the host's own (its clock stamps its records); ages are counted on that clock too.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

from launcher.sharing.hostview import ClusterView, DeviceView, Holder, HostView

__all__ = ["render", "render_host", "describe_cordon", "describe_leases", "ranges", "age"]

T = TypeVar("T")
#: Between the holders (or waiters) of one host: one per line.
NEXT = ";\n    "


def render(view: ClusterView) -> str:
    hosts = [h for h in view.hosts if h.role == "host"]
    spares = len(view.hosts) - len(hosts)
    head = (f"cluster {view.cluster} ({view.source}): {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
            f"{f', {spares} spare' + ('s' if spares != 1 else '') if spares else ''}, at {_stamp(view.time)}")
    lines = [head]
    for host in view.hosts:
        lines += [""] + render_host(host)
    counts: dict = {}
    for host in view.hosts:
        counts[host.status] = counts.get(host.status, 0) + 1
    lines += ["", "hosts: " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    return "\n".join(lines)


def render_host(host: HostView) -> List[str]:
    out = [f"{host.name} ({host.address})  {host.role}  {host.status}"]
    if host.unreachable is not None:
        return out + [f"  {host.unreachable}"]
    clock = host.clock if host.clock is not None else time.time()
    facts = []
    if host.load:
        facts.append("load " + " ".join(f"{x:.2f}" for x in host.load))
    if host.memory:
        free, total = host.memory.get("available_bytes"), host.memory.get("total_bytes")
        facts.append(f"memory {_gb(free)} of {_gb(total)} GB free")
    if host.disks:
        facts.append("disk free: " + ", ".join(
            f"{d.what} {d.error}" if d.error else f"{d.what} {_gb(d.free_bytes)} GB" for d in host.disks))
    if facts:
        out.append("  " + " | ".join(facts))
    out += [f"  problem: {p}" for p in host.problems]
    if host.cordoned:
        out.append(f"  {describe_cordon(host.cordon, clock)}")
    if host.cooldown is not None:
        cool = host.cooldown
        if cool.active:
            until = f"{_when(cool.until, clock, ago=False)} ({age(cool.remaining_s)} left)"
            out.append(f"  cooling down: {cool.reason}; no new job until {until}")
        else:
            out.append(f"  exclusions remembered: {cool.reason}; cooldown over")
        if cool.cordon_due and not host.cordoned:
            out.append("  the next exclusion cordons it")
        for r in host.exclusions:
            job = f"job {r.get('job')}" if r.get("job") else "no job"
            out.append(f"    {_when(r.get('time'), clock)} {job} (by {r.get('by')}): {r.get('reason')}")
    if host.devices:
        out += _device_lines(host.devices, clock, unknown=host.state_error is not None)
    if host.slots is not None and host.slots.total is not None:
        out.append(_slot_line(host, clock))
    elif host.leases and not host.devices:
        out.append("  leases: " + NEXT.join(_holder(h, clock) for h in host.leases))
    if host.lease_note:
        out.append(f"  ({host.lease_note})")
    if host.queue:
        out.append("  queue: " + NEXT.join(f"{i}. job {t.job} of {t.user} ({_wants(t)}) waiting since "
                                           f"{_when(t.since, clock)}" for i, t in enumerate(host.queue, 1)))
    return out


def _device_lines(devices: Sequence[DeviceView], clock: float, unknown: bool) -> List[str]:
    if unknown:
        held = f"{ranges(d.device for d in devices)} holders unknown"
    else:
        held = " | ".join(f"{ranges(ids)} " + (f"job {h.job} of {h.user} since {_when(h.since, clock)}"
                                               f"{_origin(h)}" if h is not None else "free")
                          for h, ids in _groups(devices, lambda d: d.holder))
    lines = [f"  devices {held}"]
    if any(d.verdict is not None for d in devices):
        health = _groups(devices, lambda d: (d.verdict.value if d.verdict else "not probed",
                                              "; ".join(d.reasons)))
        lines.append("  health " + " | ".join(f"{ranges(ids)} {word}" + (f" ({why})" if why else "")
                                              for (word, why), ids in health))
    foreign = [f"device {d.device} runs pid {p.pid} ({p.name})" for d in devices
               if d.holder is None and d.reading is not None for p in d.reading.processes]
    if foreign and not unknown:
        lines.append("  outside any lease: " + "; ".join(foreign))
    return lines


def describe_cordon(cordon: Mapping[str, Any], clock: float) -> str:
    """`cordoned by USER since TIME (AGE ago): WHY`, or `not cordoned`."""
    if not cordon.get("cordoned"):
        return "not cordoned"
    return f"cordoned by {cordon.get('by')} since {_when(cordon.get('since'), clock)}: {cordon.get('why')}"


def describe_leases(leases: Sequence[Mapping[str, Any]], clock: float) -> str:
    """The holders of live leases (as a host reports them), `; `-separated."""
    return "; ".join(_holder(Holder.from_json(doc), clock) for doc in leases) or "no lease"


def _slot_line(host: HostView, clock: float) -> str:
    slots = host.slots
    total = f"{slots.used} of {slots.total}"
    if not slots.holders:
        return f"  slots {total} used"
    held = (f"job {h.job} of {h.user} ({h.slots}) since {_when(h.since, clock)}{_origin(h)}"
            for h in slots.holders)
    return f"  slots {total} used: " + NEXT.join(held)


def _holder(h: Holder, clock: float) -> str:
    return f"job {h.job} of {h.user} ({_wants(h)}) since {_when(h.since, clock)}{_origin(h)}"


def _wants(h: Holder) -> str:
    if h.devices:
        return f"device{'s' if len(h.devices) != 1 else ''} {ranges(h.devices)}"
    return f"{h.slots} slot{'s' if h.slots != 1 else ''}"


def _origin(h: Holder) -> str:
    if not h.launcher:
        return ""
    pid = f" pid {h.launcher_pid}" if h.launcher_pid is not None else ""
    return f", launched from {h.launcher}{pid}"


def _groups(items: Sequence[DeviceView], key: Callable[[DeviceView], T]) -> List[Tuple[T, List[int]]]:
    """Devices grouped by `key`, groups in the order of their first device."""
    groups: List[Tuple[T, List[int]]] = []
    for item in items:
        k = key(item)
        for existing, ids in groups:
            if existing == k:
                ids.append(item.device)
                break
        else:
            groups.append((k, [item.device]))
    return groups


def ranges(ids: Iterable[int]) -> str:
    """`0-3,5,7-8`: sorted ids with runs of three or more joined."""
    ids = sorted(set(ids))
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ids[i]}-{ids[j]}")
        else:
            parts += [str(x) for x in ids[i:j + 1]]
        i = j + 1
    return ",".join(parts)


def age(seconds: float) -> str:
    """`45s`, `12m`, `3h05m`, `2d04h`."""
    s = int(max(0, round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(t: Optional[float], clock: float, ago: bool = True) -> str:
    """A time on the host's clock: the time of day within a day of `clock`, else the date too; with
    `ago`, how long before `clock`."""
    if t is None:
        return "?"
    text = time.strftime("%H:%M:%S" if abs(clock - t) < 86400 else "%Y-%m-%d %H:%M", time.localtime(t))
    return f"{text} ({age(clock - t)} ago)" if ago else text


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _gb(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 1e9:.1f}"
