"""Choose where a restarted attempt resumes: the newest checkpoint that every host holds complete.

Hosts share no filesystem: each host's checkpoint folder is scanned on that host (`python -m
refinenet.manifest scan DIR`: manifests and sizes; see docs/workload-contract.md), the scans are
intersected here, and only the chosen checkpoint is then verified against the digest recorded when it
was written (`verify`). Pure functions, no I/O.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on one host, as its manifest describes it."""

    path: str
    epoch: int
    step: int
    global_step: int
    steps_per_epoch: Optional[int] = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def key(self) -> Tuple[int, int, str]:
        return (self.global_step, self.epoch, self.name)


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a new attempt starts from, with its path on each host."""

    name: str
    epoch: int
    step: int
    global_step: int
    paths: Mapping[str, str]
    steps_per_epoch: Optional[int] = None

    def describe(self) -> str:
        return f"{self.name} (epoch {self.epoch}, global step {self.global_step})"


@dataclass(frozen=True)
class Skipped:
    """A checkpoint a host's scan refused, and why (partial, corrupt, manifest missing)."""

    host: str
    path: str
    why: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def describe(self) -> str:
        return f"{self.name} on {self.host}: {self.why}"


def _opt_int(value) -> Optional[int]:
    return None if value is None else int(value)


class ScanError(ValueError):
    """A host's scan output could not be read."""


def parse_scan(output: str) -> Tuple[CheckpointInfo, ...]:
    """Parse the JSON list printed by `refinenet.manifest scan`."""
    try:
        records = json.loads(output)
        return tuple(CheckpointInfo(path=str(r["checkpoint"]), epoch=int(r["epoch"]), step=int(r["step"]),
                                    global_step=int(r["global_step"]),
                                    steps_per_epoch=_opt_int(r.get("steps_per_epoch")))
                     for r in records)
    except (ValueError, TypeError, KeyError) as exc:
        raise ScanError(f"unreadable checkpoint scan: {exc}: {output[:200]!r}") from exc


_SKIPPED = re.compile(r"^skipped (\S+?): (.+)$")


def parse_skipped(host: str, stderr: str) -> List[Skipped]:
    """The `skipped PATH: WHY` lines a scan printed on stderr."""
    found = []
    for line in stderr.splitlines():
        m = _SKIPPED.match(line.strip())
        if m:
            found.append(Skipped(host, m.group(1), m.group(2)))
    return found


def _ckpt_order(name: str) -> Tuple[int, int]:
    m = re.fullmatch(r"refinenet-(\d+)_(\d+)\.ckpt", name)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


@dataclass(frozen=True)
class ResumeChoice:
    """Where the next attempt starts (`point`; None: from the beginning), and why newer checkpoints
    were passed over."""

    point: Optional[ResumePoint]
    passed_over: Tuple[str, ...] = ()

    def describe(self) -> str:
        """For the job record: the checkpoint, and what was not used."""
        if self.point is None:
            return ""
        unused = "; not used: " + "; ".join(self.passed_over) if self.passed_over else ""
        return self.point.describe() + unused


def decide_resume(scans: Mapping[str, Sequence[CheckpointInfo]],
                  skipped: Sequence[Skipped] = ()) -> ResumeChoice:
    """The newest checkpoint complete on every host, and a reason for each newer one not taken
    (refused by a host's scan: partial or corrupt; or missing on some host)."""
    point = choose_resume(scans)
    floor = (point.epoch, point.step) if point else (-1, -1)
    reasons = [s.describe() for s in skipped if _ckpt_order(s.name) > floor]
    explained = {(s.host, s.name) for s in skipped}
    holders: Dict[str, List[str]] = {}
    for host, infos in scans.items():
        for c in infos:
            if (c.epoch, c.step) > floor:
                holders.setdefault(c.name, []).append(host)
    for name in sorted(holders, key=_ckpt_order, reverse=True):
        missing = sorted(h for h in scans if h not in holders[name] and (h, name) not in explained)
        if missing:
            on = ", ".join(sorted(holders[name]))
            reasons.append(f"{name}: missing on {', '.join(missing)} (complete on {on})")
    return ResumeChoice(point, tuple(reasons))


def choose_resume(scans: Mapping[str, Sequence[CheckpointInfo]]) -> Optional[ResumePoint]:
    """Newest checkpoint complete on every host (by global step), or None when there is none."""
    if not scans:
        return None
    by_host: Dict[str, Dict[Tuple[int, int, str], CheckpointInfo]] = {
        host: {c.key: c for c in infos} for host, infos in scans.items()}
    common = set.intersection(*(set(d) for d in by_host.values()))
    if not common:
        return None
    key = max(common)
    first = next(iter(by_host.values()))[key]
    return ResumePoint(name=first.name, epoch=first.epoch, step=first.step, global_step=first.global_step,
                       paths={host: d[key].path for host, d in by_host.items()},
                       steps_per_epoch=first.steps_per_epoch)
