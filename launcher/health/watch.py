"""Health checks during one attempt, in the form the supervisor polls.

Process exits are the transports' business (they know the exit status); this watch turns the
monitor's device and host findings (an unhealthy device, a host that stopped answering its
probes) into rank failures, and keeps `health.jsonl` sampled.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from launcher.failures import Failure, FailureKind
from launcher.health.monitor import HealthMonitor

#: Monitor findings that fail an attempt; 'process' findings are left to the exit statuses.
FAILING_KINDS = ("device", "probe")


class AttemptHealthWatch:
    """Wraps a running `HealthMonitor` for one attempt."""

    def __init__(self, monitor: HealthMonitor, ranks_by_host: Dict[str, List[int]]):
        self.monitor = monitor
        self.ranks_by_host = ranks_by_host

    def failures(self) -> Sequence[Failure]:
        out = []
        for f in self.monitor.check():
            if f.kind not in FAILING_KINDS:
                continue
            ranks = self.ranks_by_host.get(f.host) or [None]
            kind = FailureKind.DEVICE if f.kind == "device" else FailureKind.UNREACHABLE
            out.append(Failure(kind, f.host, f"unhealthy {f.kind}: {f.detail}", rank=ranks[0]))
        return out

    def stop(self) -> None:
        """Stop sampling without waiting for a sampling round in progress (it ends on its own)."""
        self.monitor.stop(timeout=0)


def attempt_health_watch(spec, transports, plan, pids_by_host, ranks_by_host, out_path) -> AttemptHealthWatch:
    """Start sampling the hosts of `plan` (the rank processes `pids_by_host`) into `out_path`."""
    hosts = {h: transports[h] for h in plan.hosts}
    monitor = HealthMonitor(spec, hosts, pids_by_host, out_path).start()
    return AttemptHealthWatch(monitor, {h: list(r) for h, r in ranks_by_host.items()})
