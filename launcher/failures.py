"""How a process of an attempt failed: one frozen value, from the agent's report to `job.json`.

A `Failure` is built complete (rank, host, how, when, its log tail) before it is recorded; the
attempt keeps the candidates, the supervisor completes the root cause (the rank of a multi-rank
process, the log tail) with `dataclasses.replace`, and the job record stores it as it is.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple


class FailureKind(str, enum.Enum):
    """What failed: decides the restart and exclusion policy (launcher.policy, launcher.exclusion)."""

    #: A process ended with a non-zero exit code or was killed by a signal.
    EXIT = "exit"
    #: A watched process made no progress (no line, no metrics record) for `health.hang_timeout_s`.
    HANG = "hang"
    #: The host's agent or its connection went away while processes ran there.
    LOST = "lost"
    #: The host's agent could not be started, or the host stopped answering its health probes.
    UNREACHABLE = "unreachable"
    #: A device of the host turned unhealthy.
    DEVICE = "device"
    #: The host's checkpoints could not be read, or not carried to it.
    SCAN = "scan"
    #: The job's lease on the host could not be taken again (its agent was lost and another job holds
    #: the devices or slots now): not the host's fault.
    LEASE = "lease"

    def __str__(self) -> str:
        return self.value


def _opt_int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


@dataclass(frozen=True)
class Failure:
    """A failed process (or host) of an attempt: which rank (None for an auxiliary process, named by
    `who`, or for a whole host), where, how (`reason`), when (epoch seconds), and its last log lines."""

    kind: FailureKind
    host: str
    reason: str
    rank: Optional[int] = None
    who: str = ""
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    time: Optional[float] = None
    log_tail: Tuple[str, ...] = ()

    def summary(self) -> str:
        """`rank 1 on host-b: exit code 3`, `the scheduler on host-a: ...`, or `host-b: ...`."""
        who = f"rank {self.rank}" if self.rank is not None else self.who
        where = f"{who} on {self.host}" if who else self.host
        return f"{where}: {self.reason}" if where else self.reason

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind.value, "reason": self.reason, "rank": self.rank, "who": self.who,
                "host": self.host, "exit_code": self.exit_code, "signal": self.signal,
                "log_tail": list(self.log_tail), "time": self.time}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Failure:
        reason, who, host = str(d.get("reason", "")), str(d.get("who") or ""), str(d.get("host") or "")
        rank = _opt_int(d.get("rank"))
        if "who" not in d and rank is None and host and f" on {host}: " in reason:
            who, reason = reason.split(f" on {host}: ", 1)
        time = d.get("time")
        return cls(kind=FailureKind(d.get("kind") or FailureKind.EXIT.value), host=host, reason=reason,
                   rank=rank, who=who, exit_code=_opt_int(d.get("exit_code")),
                   signal=_opt_int(d.get("signal")),
                   time=None if time is None else float(time), log_tail=tuple(d.get("log_tail") or ()))


__all__ = ["Failure", "FailureKind"]
