"""Which hosts are taken out of a job, and which spare takes each one's place. Pure: no I/O.

A host is excluded when it is the root cause of `exclude_after` failed attempts in a row (its rank
or the scheduler on it exited badly, was killed, hung, or its agent was lost), at once when its
devices are unhealthy or it cannot be reached, or when the user names it (`--exclude-host`).
A failure that says the input is bad (the workload's exit code 2) never counts against a host:
another host would fail the same way.

Excluding a host keeps the world size: a spare with as many ranks takes its place in the host list
(so its ranks and, for rank tables, its position are the excluded host's), and the master moves
with it when the master was there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from launcher.errors import LauncherError
from launcher.failures import Failure, FailureKind
from launcher.policy import BAD_INPUT_EXIT
from launcher.spec.model import ClusterSpec, HostSpec

#: Failure kinds that take a host out at once (the host itself is broken).
IMMEDIATE = (FailureKind.DEVICE, FailureKind.UNREACHABLE)


class NoSpareLeft(LauncherError):
    """A host must be excluded and no spare can take its place; names every excluded host and why."""

    exit_code = 1

    def __init__(self, excluded: Dict[str, str], host: str):
        listed = "; ".join(f"{name}: {why}" for name, why in excluded.items())
        super().__init__(f"host {host} must be excluded but no spare is left to take its ranks "
                         f"(excluded: {listed})")
        self.excluded, self.host = dict(excluded), host


@dataclass(frozen=True)
class Exclusion:
    host: str
    reason: str


@dataclass
class HostTracker:
    """Counts, attempt after attempt, how often in a row each host was the root cause."""

    exclude_after: int
    streak: Dict[str, int] = field(default_factory=dict)

    def observe(self, failure: Optional[Failure]) -> Optional[Exclusion]:
        """The exclusion this failed attempt's root cause calls for, if any."""
        if failure is None or not failure.host:
            self.streak.clear()
            return None
        kind = failure.kind
        if (failure.exit_code == BAD_INPUT_EXIT and kind == FailureKind.EXIT) or kind == FailureKind.LEASE:
            self.streak.clear()  # bad input, or another job holding the devices: not the host's fault
            return None
        host = failure.host
        if kind in IMMEDIATE:
            return Exclusion(host, f"{describe_kind(kind)}: {failure.reason}")
        count = self.streak.get(host, 0) + 1
        self.streak = {host: count}
        if self.exclude_after and count >= self.exclude_after:
            who = f"rank {failure.rank}" if failure.rank is not None else (failure.who or "a process")
            return Exclusion(host, f"root cause of {count} failed attempts in a row (last: {who}: "
                                   f"{failure.reason})")
        return None


def describe_kind(kind: FailureKind) -> str:
    names = {FailureKind.DEVICE: "unhealthy device", FailureKind.UNREACHABLE: "unreachable"}
    return names.get(kind, kind.value)


def replace_host(spec: ClusterSpec, excluded: str, spares: List[HostSpec]) -> Tuple[ClusterSpec, HostSpec]:
    """`spec` with host `excluded` replaced by the first of `spares` with as many ranks; the spare."""
    index = next(i for i, h in enumerate(spec.hosts) if h.name == excluded)
    old = spec.hosts[index]
    spare = next((s for s in spares if len(s.devices) == len(old.devices)), None)
    if spare is None:
        raise LookupError(excluded)
    hosts = spec.hosts[:index] + (spare,) + spec.hosts[index + 1:]
    master = spec.master
    if master.host == excluded:
        master = dataclasses.replace(master, host=spare.name, addr=spare.address)
    return dataclasses.replace(spec, hosts=hosts, master=master), spare


@dataclass
class HostPool:
    """The job's hosts: active (holding ranks), spare (standing by) and excluded (with the reason)."""

    spec: ClusterSpec
    spares: List[HostSpec]
    excluded: Dict[str, str] = field(default_factory=dict)
    replaced_by: Dict[str, str] = field(default_factory=dict)

    def exclude(self, host: str, reason: str) -> HostSpec:
        """Take `host` out; the spare now holding its ranks. `NoSpareLeft` when none fits."""
        self.excluded[host] = reason
        try:
            self.spec, spare = replace_host(self.spec, host, self.spares)
        except LookupError:
            raise NoSpareLeft(self.excluded, host) from None
        self.spares = [s for s in self.spares if s.name != spare.name]
        self.replaced_by[host] = spare.name
        return spare

    def states(self) -> Dict[str, Dict[str, Optional[str]]]:
        """Host name -> {"state": active|spare|excluded, "reason", "replaced_by"} for records and status."""
        out: Dict[str, Dict[str, Optional[str]]] = {}
        for h in self.spec.hosts:
            out[h.name] = {"state": "active", "reason": None, "replaced_by": None}
        for h in self.spares:
            out[h.name] = {"state": "spare", "reason": None, "replaced_by": None}
        for name, why in self.excluded.items():
            out[name] = {"state": "excluded", "reason": why, "replaced_by": self.replaced_by.get(name)}
        return out
