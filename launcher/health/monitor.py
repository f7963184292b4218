"""Periodic health samples during a run, appended to `JOB/health.jsonl`, and the failures they show.

A background thread samples every host each `interval_s`: its devices (npu-smi / nvidia-smi), memory,
the output directory's free space and each rank process (status, RSS, CPU). `check()` hands the
supervisor the failures seen since its last call: an unhealthy device, a rank process that is a
zombie or gone, a host whose probes failed `unreachable_after` times in a row. A rank that exited on
its own also shows as gone: the supervisor reads exit statuses first and removes finished ranks with
`set_pids`. Nothing here raises into the caller's thread; internal errors are kept in `errors`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.health.collect import PROBE_TIMEOUT_S, output_dir, parallel_map, read_devices
from launcher.health.probes import read_host
from launcher.health.samples import HealthSampleWriter, plain
from launcher.health.verdicts import NO_THRESHOLDS, HealthThresholds, Verdict, device_dict

__all__ = ["HealthFailure", "HealthMonitor"]

FAILED_STATUSES = ("zombie", "gone", "dead")
#: Hosts sampled at once: sampling is not urgent, and its threads count against the launcher's budget.
SAMPLE_WIDTH = 8


@dataclass(frozen=True)
class HealthFailure:
    """Why the run should be treated as failed: which host, what kind ('device', 'process', 'probe')."""

    host: str
    kind: str
    detail: str
    time: float
    device: Optional[int] = None
    pid: Optional[int] = None

    @property
    def key(self) -> Tuple[str, str, Optional[int], Optional[int]]:
        return self.host, self.kind, self.device, self.pid

    def __str__(self) -> str:
        return f"{self.host}: {self.detail}"


class HealthMonitor:
    """Samples every host of `spec` through `transports` (host name -> Transport) on a daemon thread."""

    def __init__(self, spec, transports: Mapping[str, Any], pids_by_host: Mapping[str, Sequence[int]],
                 out_path: os.PathLike[str] | str, interval_s: Optional[float] = None,
                 thresholds: HealthThresholds = NO_THRESHOLDS, *, unreachable_after: int = 3,
                 timeout: float = PROBE_TIMEOUT_S, clock: Callable[[], float] = time.time):
        self.spec = spec
        self.transports = dict(transports)
        self.interval_s = float(spec.health.interval_s if interval_s is None else interval_s)
        self.thresholds = thresholds
        self.unreachable_after = unreachable_after
        self.timeout = timeout
        self.clock = clock
        self.writer = HealthSampleWriter(out_path)
        self.errors: List[str] = []
        self._pids: Dict[str, Tuple[int, ...]] = {h: tuple(p) for h, p in pids_by_host.items()}
        self._generation: Dict[str, int] = {}
        self._misses: Dict[str, int] = {}
        self._cpu: Dict[Tuple[str, int], Tuple[Optional[float], float, float]] = {}
        self._pending: Dict[tuple, HealthFailure] = {}
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.samples_taken = 0

    # -- control ------------------------------------------------------------------------------

    def start(self) -> HealthMonitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="health-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop sampling; waits for a sample in progress (at most `timeout` seconds)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> HealthMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_pids(self, host: str, pids: Sequence[int]) -> None:
        """Watch these rank processes on `host` from now on (after a restart, or when ranks finish)."""
        with self._lock:
            self._pids[host] = tuple(pids)
            self._generation[host] = self._generation.get(host, 0) + 1
            for key in [k for k in self._pending if k[0] == host and k[1] == "process"]:
                del self._pending[key]

    def check(self) -> List[HealthFailure]:
        """Failures seen since the last call, oldest first, each (host, kind, device, pid) once."""
        with self._lock:
            failures, self._pending = list(self._pending.values()), {}
        return sorted(failures, key=lambda f: f.time)

    # -- sampling -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception as exc:  # the thread must survive anything
                self._note(f"sample failed: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _note(self, message: str) -> None:
        with self._lock:
            self.errors = (self.errors + [message])[-100:]

    def sample_once(self) -> List[Dict[str, Any]]:
        """Sample every host now, append the records to the file, and return them."""
        with self._sample_lock:
            records = parallel_map(self._sample_host, list(self.spec.hosts), max_workers=SAMPLE_WIDTH)
            for record in records:
                try:
                    self.writer.write(record)
                except Exception as exc:
                    self._note(f"cannot write {self.writer.path}: {exc}")
            self.samples_taken += 1
            return records

    def _sample_host(self, host) -> Dict[str, Any]:
        with self._lock:
            pids = self._pids.get(host.name, ())
            generation = self._generation.get(host.name, 0)
        now = self.clock()
        record: Dict[str, Any] = {"time": now, "host": host.name, "verdict": Verdict.HEALTHY.value,
                                  "devices": [], "mem": None, "disk": None, "processes": [], "errors": []}
        failures: List[HealthFailure] = []
        transport = self.transports.get(host.name)
        errors: List[str] = record["errors"]
        if transport is None:
            errors.append("no connection to the host")
        else:
            self._sample_processes(host, transport, pids, now, record, failures, errors)
            self._sample_devices(host, transport, now, record, failures, errors)
        self._count_misses(host.name, bool(errors), now, errors, failures)
        if failures:
            record["verdict"] = Verdict.UNHEALTHY.value
        elif any(d.get("verdict") == Verdict.DEGRADED.value for d in record["devices"]):
            record["verdict"] = Verdict.DEGRADED.value
        record["failures"] = [f.detail for f in failures]
        with self._lock:
            stale = self._generation.get(host.name, 0) != generation
            for failure in failures:
                if not (stale and failure.kind == "process"):
                    self._pending.setdefault(failure.key, failure)
        return record

    def _sample_processes(self, host, transport, pids, now, record, failures, errors) -> None:
        try:
            sample = read_host(transport, host.python, dirs=[output_dir(self.spec, host)], pids=pids,
                               timeout=self.timeout)
        except Exception as exc:
            errors.append(getattr(exc, "cause", None) or f"{type(exc).__name__}: {exc}")
            return
        record["mem"] = plain(sample.memory)
        record["disk"] = plain(sample.dirs[0]) if sample.dirs else None
        for proc in sample.processes:
            entry = plain(proc)
            entry["cpu_percent"] = self._cpu_percent(host.name, proc, sample.time)
            record["processes"].append(entry)
            if proc.status in FAILED_STATUSES:
                why = f"rank process {proc.pid} is {proc.status}"
                failures.append(HealthFailure(host.name, "process", why, now, pid=proc.pid))

    def _cpu_percent(self, host: str, proc, at: float) -> Optional[float]:
        if proc.cpu_s is None:
            self._cpu.pop((host, proc.pid), None)
            return None
        previous = self._cpu.get((host, proc.pid))
        self._cpu[(host, proc.pid)] = (proc.started, proc.cpu_s, at)
        if previous is None or previous[0] != proc.started or at <= previous[2]:
            return None
        return round(100.0 * (proc.cpu_s - previous[1]) / (at - previous[2]), 1)

    def _sample_devices(self, host, transport, now, record, failures, errors) -> None:
        if self.spec.device == "cpu" or not self.spec.health.check_devices:
            return
        try:
            rows = read_devices(transport, host, self.spec.device, self.thresholds, self.timeout)
        except Exception as exc:
            errors.append(getattr(exc, "cause", None) or f"{type(exc).__name__}: {exc}")
            return
        for row in rows:
            record["devices"].append(device_dict(row))
            if row.verdict == Verdict.UNHEALTHY:
                failures.append(HealthFailure(host.name, "device",
                                              f"device {row.device} unhealthy: {'; '.join(row.reasons)}",
                                              now, device=row.device))

    def _count_misses(self, host: str, missed: bool, now: float, errors: List[str],
                      failures: List[HealthFailure]) -> None:
        with self._lock:
            self._misses[host] = self._misses.get(host, 0) + 1 if missed else 0
            misses = self._misses[host]
        if misses >= self.unreachable_after:
            failures.append(HealthFailure(host, "probe", f"health probes failed {misses} times in a row: "
                                                         f"{errors[-1]}", now))
