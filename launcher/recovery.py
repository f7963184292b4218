"""What a failure cost: the phases from the failure to the first step of the attempt that resumed after it.

Kept with the failed attempt in `job.json` (`attempts[i].recovery`), shown by `status`, the final
summary and the report, and measured by `benchmarks/failure_recovery.py`. Pure: the supervisor hands in
the moments it saw; consecutive phases share their bounds, so they add up to the whole.

Clocks: the failure, the processes' start and the workload's own events (imports, cluster formed,
checkpoint loaded, first step: its metrics records, docs/workload-contract.md) are the hosts' times; the
launcher's own moments are its clock. Hosts and launcher are expected to agree (NTP); a phase that
would come out negative because they do not is shown as 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

#: The detail that says how long the next attempt's start waited for its warm interpreters (slowest host):
#: their imports, begun after the teardown, that the backoff and the resume point did not cover. The
#: workload's time, spent in the `start` phase (a cold start spends it in `configure`).
WARM_WAIT = "warm imports"

#: The bounds in order, and the phase each one closes.
BOUNDS: Tuple[Tuple[str, str], ...] = (
    ("failed_at", ""),
    ("detected_at", "detect"),          # the failure reached the launcher and was recognised
    ("gone_at", "teardown"),            # every process of the attempt gone on every host
    ("next_at", "backoff"),             # restart decided, backoff waited, spare taken
    ("resume_at", "resume point"),      # checkpoints scanned, the chosen one verified (and copied)
    ("started_at", "start"),            # plan rendered, every process of the next attempt started
    ("configured_at", "configure"),     # imports, cluster formed, checkpoint loaded (the workload's events)
    ("first_step_at", "first step"),    # the first resumed step done on every rank (compile included)
)


@dataclass(frozen=True)
class Recovery:
    """The moments after one failure (epoch seconds; None: not reached or not reported) and the steps
    that were computed again (the failed attempt's last step minus the resume point's)."""

    attempt: int
    failed_at: Optional[float] = None
    detected_at: Optional[float] = None
    gone_at: Optional[float] = None
    next_at: Optional[float] = None
    resume_at: Optional[float] = None
    started_at: Optional[float] = None
    configured_at: Optional[float] = None
    first_step_at: Optional[float] = None
    steps_rolled_back: Optional[int] = None
    #: The workload's own durations on the slowest rank: imports, cluster formation, checkpoint load; and
    #: WARM_WAIT.
    details: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: How the next attempt's processes started: "warm" (interpreters imported ahead), "cold", "mixed".
    start: str = ""

    def with_moments(self, **moments: Any) -> Recovery:
        return dataclasses.replace(self, **moments)

    def phases(self) -> List[Tuple[str, Optional[float]]]:
        """(phase, seconds) in order; a phase whose bounds are not both known is None."""
        out: List[Tuple[str, Optional[float]]] = []
        previous = self.failed_at
        for bound, name in BOUNDS[1:]:
            at = getattr(self, bound)
            if previous is None or at is None:
                out.append((name, None))
            else:
                out.append((name, max(0.0, at - previous)))
            previous = at if at is not None else previous
        return out

    @property
    def total_s(self) -> Optional[float]:
        """From the failure to the first resumed step; None until that step is done."""
        if self.failed_at is None or self.first_step_at is None:
            return None
        return max(0.0, self.first_step_at - self.failed_at)

    @property
    def launcher_s(self) -> Optional[float]:
        """The launcher's own part: from the failure's detection to the next attempt's processes started,
        less the backoff it was told to wait and the warm interpreters' imports it waited for (WARM_WAIT)."""
        values = dict(self.phases())
        parts = [values.get(n) for n in ("detect", "teardown", "resume point", "start")]
        if any(p is None for p in parts):
            return None
        return sum(parts) - min(values["start"], self.details.get(WARM_WAIT, 0.0))

    def describe(self) -> str:
        """`23.4 s to the first resumed step (detect 0.1 s, teardown 0.3 s, ...); 3 steps computed again`."""
        shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases() if seconds is not None)
        total = f"{self.total_s:.1f} s to the first resumed step" if self.total_s is not None else \
            "no resumed step yet"
        text = f"{total} ({shown})" if shown else total
        if self.details:
            text += "; workload: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.details.items())
        if self.start:
            text += f"; {self.start} start"
        if self.steps_rolled_back is not None:
            text += f"; {self.steps_rolled_back} step(s) computed again"
        return text

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["details"] = dict(self.details)
        data["phases"] = {name: seconds for name, seconds in self.phases()}
        data["total_s"] = self.total_s
        data["launcher_s"] = self.launcher_s
        return data

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recovery:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["details"] = dict(values.get("details") or {})
        return cls(**values)


def rolled_back(last_epoch_step: Optional[Tuple[int, int]], steps_per_epoch: Optional[int],
                resume_global_step: int) -> Optional[int]:
    """Steps computed again: the failed attempt's last step done ((epoch, step in epoch), epochs from 1)
    minus the global step it resumes from; None when either is unknown."""
    if last_epoch_step is None or not steps_per_epoch:
        return None
    epoch, step = last_epoch_step
    return max(0, (epoch - 1) * steps_per_epoch + step - resume_global_step)


__all__ = ["Recovery", "BOUNDS", "WARM_WAIT", "rolled_back"]
