"""Health verdicts: each device classified from its reading, each host and the cluster from their devices.

A device is healthy iff its tool says OK. `Warning` is degraded (counted as a failure only with
`warning_is_failure`); Alarm, Critical, UNKNOWN, anything unrecognised, a lost GPU, uncorrected ECC
errors and a device the tool does not list are unhealthy. Temperature and memory thresholds are
optional and, when crossed, make a device unhealthy.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.health.host import HostSample
from launcher.health.probes import DeviceReading
from launcher.health.samples import plain

__all__ = ["Verdict", "HealthThresholds", "DeviceRow", "HealthReport", "ClusterHealth", "classify_device",
           "classify_devices", "format_table"]


class Verdict(str, enum.Enum):
    """From best to worst; a host or cluster takes the worst verdict of its parts."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"
    UNREACHABLE = "UNREACHABLE"

    @property
    def rank(self) -> int:
        return list(Verdict).index(self)

    @staticmethod
    def worst(verdicts) -> Verdict:
        return max(verdicts, key=lambda v: v.rank, default=Verdict.HEALTHY)


@dataclass(frozen=True)
class HealthThresholds:
    """Optional limits on top of the tool's own health word."""

    max_temp_c: Optional[float] = None
    max_memory_fraction: Optional[float] = None
    warning_is_failure: bool = False


@dataclass(frozen=True)
class DeviceRow:
    """A device the job uses, with its verdict and the reasons for it (empty when healthy)."""

    device: int
    verdict: Verdict
    reasons: Tuple[str, ...] = ()
    reading: Optional[DeviceReading] = None


NO_THRESHOLDS = HealthThresholds()


def classify_device(reading: DeviceReading, thresholds: HealthThresholds = NO_THRESHOLDS) -> DeviceRow:
    reasons: List[str] = []
    verdict = Verdict.HEALTHY
    word = reading.health.strip()
    detail = f" ({reading.detail})" if reading.detail else ""
    if word.upper() == "OK":
        pass
    elif word.lower() == "warning":
        verdict = Verdict.UNHEALTHY if thresholds.warning_is_failure else Verdict.DEGRADED
        reasons.append(f"health Warning{detail}")
    elif word.upper() == "LOST":
        verdict = Verdict.UNHEALTHY
        reasons.append("GPU is lost")
    else:
        verdict = Verdict.UNHEALTHY
        known = word.lower() in ("alarm", "critical", "unknown")
        reasons.append(f"health {word or '(empty)'}{detail}" if known else f"unrecognised health {word!r}")
    if reading.ecc_errors:
        verdict = Verdict.UNHEALTHY
        reasons.append(f"{reading.ecc_errors} uncorrected ECC errors")
    hot = thresholds.max_temp_c
    if hot is not None and reading.temp_c is not None and reading.temp_c > hot:
        verdict = Verdict.UNHEALTHY
        reasons.append(f"temperature {reading.temp_c:g} C > {thresholds.max_temp_c:g} C")
    if (thresholds.max_memory_fraction is not None and reading.memory_total_mb
            and reading.memory_used_mb is not None
            and reading.memory_used_mb / reading.memory_total_mb > thresholds.max_memory_fraction):
        verdict = Verdict.UNHEALTHY
        reasons.append(f"memory {reading.memory_used_mb}/{reading.memory_total_mb} MB used "
                       f"> {thresholds.max_memory_fraction:.0%}")
    return DeviceRow(reading.device, verdict, tuple(reasons), reading)


def classify_devices(expected: Sequence[int], readings: Mapping[int, DeviceReading], tool: str,
                     thresholds: HealthThresholds = NO_THRESHOLDS) -> Tuple[DeviceRow, ...]:
    """Rows for the devices a host gives the job; a device the tool does not list is unhealthy."""
    rows = []
    for device in expected:
        if device in readings:
            rows.append(classify_device(readings[device], thresholds))
        else:
            listed = ", ".join(str(d) for d in sorted(readings)) or "none"
            rows.append(DeviceRow(device, Verdict.UNHEALTHY, (f"not listed by {tool} (it lists {listed})",)))
    return tuple(rows)


def device_dict(row: DeviceRow) -> Dict[str, Any]:
    """A device row as JSON-ready data: the reading's fields plus verdict and reasons."""
    data = plain(row.reading) if row.reading else {"device": row.device}
    data.update(verdict=row.verdict.value, reasons=list(row.reasons))
    return data


@dataclass(frozen=True)
class HealthReport:
    """One host: reachable or not, its devices, memory and the job's directories."""

    host: str
    devices: Tuple[DeviceRow, ...] = ()
    sample: Optional[HostSample] = None
    problems: Tuple[str, ...] = ()
    unreachable: Optional[str] = None

    @property
    def verdict(self) -> Verdict:
        if self.unreachable:
            return Verdict.UNREACHABLE
        own = Verdict.UNHEALTHY if self.problems else Verdict.HEALTHY
        return Verdict.worst([own, *(d.verdict for d in self.devices)])

    def reasons(self) -> List[str]:
        """Every cause of a verdict other than HEALTHY, one line each."""
        if self.unreachable:
            return [self.unreachable]
        out = list(self.problems)
        for d in self.devices:
            out += [f"device {d.device}: {r}" for r in d.reasons]
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "verdict": self.verdict.value, "reasons": self.reasons(),
                "devices": [device_dict(d) for d in self.devices],
                "host_sample": plain(self.sample) if self.sample else None}


EXIT_CODES = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 0, Verdict.UNHEALTHY: 1, Verdict.UNREACHABLE: 2}


def format_table(rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _num(value: Optional[float], unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def _gb(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1e9:.1f}G"


@dataclass(frozen=True)
class ClusterHealth:
    """Health of every host of a cluster."""

    reports: Tuple[HealthReport, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.worst(r.verdict for r in self.reports)

    @property
    def exit_code(self) -> int:
        """0 healthy or degraded, 1 unhealthy, 2 a host could not be reached."""
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> Dict[str, Any]:
        return {"verdict": self.verdict.value, "hosts": [r.to_dict() for r in self.reports]}

    def render(self) -> str:
        hosts = [("HOST", "VERDICT", "MEM AVAIL", "DIR", "DISK FREE", "WRITABLE")]
        for r in self.reports:
            s = r.sample
            mem = f"{_gb(s.memory.available)}/{_gb(s.memory.total)}" if s else "-"
            dirs = list(s.dirs) if s and s.dirs else [None]
            for i, d in enumerate(dirs):
                lead = (r.host, r.verdict.value, mem) if i == 0 else ("", "", "")
                hosts.append((*lead, d.path if d else "-", _gb(d.free) if d else "-",
                              ("yes" if d.writable else "no") if d else "-"))
        out = format_table(hosts)
        device_rows = [("HOST", "DEVICE", "NPU/GPU", "NAME", "HEALTH", "VERDICT", "TEMP", "POWER", "UTIL",
                        "MEMORY(MB)", "PROCS")]
        for r in self.reports:
            for d in r.devices:
                g = d.reading
                if g is None:
                    device_rows.append((r.host, str(d.device), "-", "-", "-", d.verdict.value, *["-"] * 5))
                    continue
                mem = "-" if g.memory_total_mb is None else f"{_num(g.memory_used_mb)}/{g.memory_total_mb}"
                device_rows.append((r.host, str(d.device), g.label, g.name, g.health, d.verdict.value,
                                    _num(g.temp_c, "C"), _num(g.power_w, "W"), _num(g.util_pct, "%"), mem,
                                    str(len(g.processes))))
        if len(device_rows) > 1:
            out += [""] + format_table(device_rows)
        problems = [f"  {r.host}: {why}" for r in self.reports for why in r.reasons()]
        if problems:
            out += ["", "problems:"] + problems
        out += ["", f"overall: {self.verdict.value}"]
        return "\n".join(out)
