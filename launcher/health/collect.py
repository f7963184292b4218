"""One health check of every host of a cluster: reachability, memory, job directories, devices.

Hosts are checked in parallel, each through its own transport; a host that cannot be reached is
reported as UNREACHABLE, never raised.
"""
from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from launcher.health.host import HostSample
from launcher.health.probes import device_probe, read_host
from launcher.health.verdicts import (
    NO_THRESHOLDS,
    ClusterHealth,
    DeviceRow,
    HealthReport,
    HealthThresholds,
    classify_devices,
)
from launcher.transport.base import HostError

__all__ = ["output_dir", "dir_checks", "read_devices", "check_host", "check_cluster", "parallel_map",
           "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 60.0
T = TypeVar("T")
R = TypeVar("R")


def output_dir(spec, host) -> str:
    """The job's output directory on `host`: `job.output_dir`, relative to the host's workdir."""
    return posixpath.normpath(posixpath.join(host.workdir, spec.job.output_dir))


def dir_checks(sample: HostSample, workdir: str, outdir: str,
               min_free_disk_gb: float) -> List[Tuple[str, bool, str]]:
    """(check, ok, detail) for the workdir being writable and the output filesystem's free space."""
    by_path = {d.path: d for d in sample.dirs}
    checks: List[Tuple[str, bool, str]] = []
    work = by_path.get(posixpath.normpath(workdir))
    if work is not None:
        if work.writable:
            created = "" if work.exists else " (will be created)"
            checks.append(("workdir writable", True, work.path + created))
        else:
            checks.append(("workdir writable", False, f"workdir {work.path}: {work.error or 'not writable'}"))
    out = by_path.get(posixpath.normpath(outdir))
    if out is not None:
        if out.free is None:
            why = out.error or "free space unknown"
            checks.append(("disk space", False, f"output dir {out.path}: {why}"))
        elif out.free_gb < min_free_disk_gb:
            checks.append(("disk space", False, f"output dir {out.path}: {out.free_gb:.2f} GB free on the "
                                                f"filesystem of {out.checked}, need {min_free_disk_gb:g} GB"))
        else:
            checks.append(("disk space", True, f"{out.free_gb:.1f} GB free for {out.path}"))
    return checks


def read_devices(transport, host, device: str, thresholds: HealthThresholds,
                 timeout: float = PROBE_TIMEOUT_S) -> Tuple[DeviceRow, ...]:
    """Classified rows for the host's devices; `HostError` (e.g. `ToolNotFound`) when the tool gives none."""
    probe = device_probe(device)
    if probe is None:
        return ()
    return classify_devices(host.devices, probe.read(transport, timeout), probe.tool, thresholds)


def check_host(spec, host, transport, thresholds: HealthThresholds = NO_THRESHOLDS, *,
               pids: Sequence[int] = (), timeout: float = PROBE_TIMEOUT_S) -> HealthReport:
    """Health of one host; never raises for a host-side problem."""
    if transport is None:
        return HealthReport(host.name, unreachable="no connection to the host")
    try:
        transport.probe(host.python)
    except HostError as exc:
        return HealthReport(host.name, unreachable=exc.cause)
    problems: List[str] = []
    sample: Optional[HostSample] = None
    try:
        sample = read_host(transport, host.python, dirs=[host.workdir, output_dir(spec, host)], pids=pids,
                           timeout=timeout)
        problems += [detail for _, ok, detail in dir_checks(sample, host.workdir, output_dir(spec, host),
                                                            spec.health.min_free_disk_gb) if not ok]
    except HostError as exc:
        problems.append(exc.cause)
    devices: Tuple[DeviceRow, ...] = ()
    if spec.health.check_devices:
        try:
            devices = read_devices(transport, host, spec.device, thresholds, timeout)
        except HostError as exc:
            problems.append(exc.cause)
    return HealthReport(host.name, devices=devices, sample=sample, problems=tuple(problems))


def parallel_map(fn: Callable[[T], R], items: Sequence[T], max_workers: int = 16) -> List[R]:
    """`[fn(x) for x in items]`, run on up to `max_workers` threads, results in order."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="health") as pool:
        return list(pool.map(fn, items))


def check_cluster(spec, transports: Mapping[str, object], thresholds: HealthThresholds = NO_THRESHOLDS,
                  *, unreachable: Optional[Mapping[str, str]] = None,
                  timeout: float = PROBE_TIMEOUT_S) -> ClusterHealth:
    """Health of every host of `spec`; `unreachable` names hosts whose transport could not be opened."""
    down: Dict[str, str] = dict(unreachable or {})

    def one(host) -> HealthReport:
        if host.name in down:
            return HealthReport(host.name, unreachable=down[host.name])
        return check_host(spec, host, transports.get(host.name), thresholds, timeout=timeout)

    return ClusterHealth(tuple(parallel_map(one, list(spec.hosts))))
