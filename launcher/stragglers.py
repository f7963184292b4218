"""Straggler detection from progress records: a rank whose steps stay slower than the others'.

Pure: fed the metrics records the log aggregator writes (`rank`, `host`, `attempt`, `epoch`,
`epoch_step`, `time`), it keeps per rank the time of its last record and its latest step time.
A rank whose step time is above `factor` times the median of the other ranks' latest step times
for `window` consecutive steps is flagged once per attempt.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["Straggler", "StragglerDetector", "step_times"]

DEFAULT_FACTOR = 1.5
DEFAULT_WINDOW = 5


@dataclass(frozen=True)
class Straggler:
    """A flagged rank: its step time, the median of the others', their ratio and since when."""

    rank: int
    host: str
    ratio: float
    step_time: float
    median_others: float
    since: float
    time: float
    attempt: int = 0
    epoch: Optional[int] = None
    epoch_step: Optional[int] = None

    def message(self) -> str:
        return (f"straggler: rank {self.rank} on {self.host} step time {self.step_time:.2f} s = "
                f"{self.ratio:.1f}x the median of the others")

    def to_dict(self) -> Dict[str, Any]:
        return {"rank": self.rank, "host": self.host, "ratio": self.ratio, "step_time": self.step_time,
                "median_others": self.median_others, "since": self.since, "time": self.time,
                "attempt": self.attempt, "epoch": self.epoch, "epoch_step": self.epoch_step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Straggler:
        def opt_int(v: Any) -> Optional[int]:
            return None if v is None else int(v)

        return cls(rank=int(d["rank"]), host=str(d.get("host", "")), ratio=float(d["ratio"]),
                   step_time=float(d.get("step_time") or 0.0),
                   median_others=float(d.get("median_others") or 0.0),
                   since=float(d.get("since") or 0.0), time=float(d.get("time") or 0.0),
                   attempt=int(d.get("attempt") or 0), epoch=opt_int(d.get("epoch")),
                   epoch_step=opt_int(d.get("epoch_step")))

    @property
    def key(self) -> Tuple[int, int]:
        return self.attempt, self.rank


@dataclass
class _RankState:
    host: str
    attempt: int
    epoch: int
    epoch_step: int
    time: float
    step_time: Optional[float] = None
    slow_steps: int = 0
    slow_since: Optional[float] = None
    flagged: bool = False


def step_interval(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> Optional[float]:
    """Seconds per step between two records of one rank, or None when they do not tell.

    Only records of one attempt and one epoch count: an epoch boundary includes checkpointing
    and evaluation, and steps per epoch are not known here.
    """
    try:
        if prev.get("attempt") != cur.get("attempt") or int(prev["epoch"]) != int(cur["epoch"]):
            return None
        steps = int(cur["epoch_step"]) - int(prev["epoch_step"])
        dt = float(cur["time"]) - float(prev["time"])
    except (KeyError, TypeError, ValueError):
        return None
    if steps <= 0 or dt < 0:
        return None
    return dt / steps


def step_times(records: Iterable[Mapping[str, Any]]) -> Dict[int, List[Tuple[Mapping[str, Any], float]]]:
    """Rank -> [(record, seconds per step since that rank's previous record)], in record order."""
    last: Dict[int, Mapping[str, Any]] = {}
    out: Dict[int, List[Tuple[Mapping[str, Any], float]]] = {}
    for rec in records:
        rank = rec.get("rank")
        if not isinstance(rank, int):
            continue
        prev = last.get(rank)
        last[rank] = rec
        if prev is not None:
            dt = step_interval(prev, rec)
            if dt is not None:
                out.setdefault(rank, []).append((rec, dt))
    return out


class StragglerDetector:
    """Feed it metrics records in arrival order; `feed` returns a `Straggler` when one is flagged."""

    def __init__(self, factor: float = DEFAULT_FACTOR, window: int = DEFAULT_WINDOW):
        if not factor > 1.0:
            raise ValueError(f"straggler factor must be > 1, got {factor}")
        if int(window) < 1:
            raise ValueError(f"straggler window must be >= 1, got {window}")
        self.factor = float(factor)
        self.window = int(window)
        self._ranks: Dict[int, _RankState] = {}

    def step_time(self, rank: int) -> Optional[float]:
        state = self._ranks.get(rank)
        return state.step_time if state else None

    def feed(self, record: Mapping[str, Any]) -> Optional[Straggler]:
        try:
            rank, attempt = int(record["rank"]), int(record.get("attempt") or 0)
            epoch, epoch_step, now = int(record["epoch"]), int(record["epoch_step"]), float(record["time"])
        except (KeyError, TypeError, ValueError):
            return None
        host = str(record.get("host") or "")
        prev = self._ranks.get(rank)
        if prev is not None and attempt < prev.attempt:
            return None
        if prev is None or prev.attempt != attempt:
            self._forget_older(attempt)
            self._ranks[rank] = _RankState(host, attempt, epoch, epoch_step, now)
            return None
        dt = step_interval({"attempt": prev.attempt, "epoch": prev.epoch, "epoch_step": prev.epoch_step,
                            "time": prev.time}, {"attempt": attempt, "epoch": epoch,
                                                 "epoch_step": epoch_step, "time": now})
        since = prev.time
        prev.host, prev.epoch, prev.epoch_step, prev.time = host, epoch, epoch_step, now
        if dt is None:
            return None
        prev.step_time = dt
        others = [s.step_time for r, s in self._ranks.items()
                  if r != rank and s.attempt == attempt and s.step_time is not None]
        if not others:
            return None
        median = statistics.median(others)
        if median <= 0 or dt <= self.factor * median:
            prev.slow_steps, prev.slow_since = 0, None
            return None
        prev.slow_steps += 1
        if prev.slow_since is None:
            prev.slow_since = since
        if prev.slow_steps < self.window or prev.flagged:
            return None
        prev.flagged = True
        return Straggler(rank=rank, host=host, ratio=round(dt / median, 2), step_time=round(dt, 4),
                         median_others=round(median, 4), since=prev.slow_since, time=now, attempt=attempt,
                         epoch=epoch, epoch_step=epoch_step)

    def _forget_older(self, attempt: int) -> None:
        """A new attempt started: ranks still on an older one no longer count as the others."""
        for r in [r for r, s in self._ranks.items() if s.attempt < attempt]:
            del self._ranks[r]
