"""Per-rank series from progress records: global step, loss, learning rate, step time, throughput."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.stragglers import step_times


@dataclass
class Series:
    """Points of one rank in one attempt, in arrival order."""

    rank: int
    attempt: int
    steps: List[int] = field(default_factory=list)
    values: List[float] = field(default_factory=list)


def steps_per_epoch(records: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """The largest step seen in an epoch that was followed by a later one (None before that)."""
    last_epoch = max((r["epoch"] for r in records if isinstance(r.get("epoch"), int)), default=None)
    done = [r["epoch_step"] for r in records
            if isinstance(r.get("epoch"), int) and isinstance(r.get("epoch_step"), int)
            and r["epoch"] < (last_epoch or 0)]
    return max(done) if done else None


def global_step(rec: Mapping[str, Any], per_epoch: Optional[int]) -> Optional[int]:
    if isinstance(rec.get("step"), int):
        return rec["step"]
    epoch, step = rec.get("epoch"), rec.get("epoch_step")
    if not isinstance(epoch, int) or not isinstance(step, int):
        return None
    return step if per_epoch is None else max(epoch - 1, 0) * per_epoch + step


def by_rank_attempt(records: Sequence[Mapping[str, Any]], key: str) -> List[Series]:
    """One series of `key` against the global step per (rank, attempt)."""
    per_epoch = steps_per_epoch(records)
    out: Dict[Tuple[int, int], Series] = {}
    for rec in records:
        value, step = rec.get(key), global_step(rec, per_epoch)
        if not isinstance(value, (int, float)) or step is None or not isinstance(rec.get("rank"), int):
            continue
        attempt = int(rec.get("attempt") or 0)
        s = out.setdefault((rec["rank"], attempt), Series(rec["rank"], attempt))
        s.steps.append(step)
        s.values.append(float(value))
    return [out[k] for k in sorted(out)]


def restart_steps(records: Sequence[Mapping[str, Any]]) -> Dict[int, int]:
    """Attempt number (2 and later) -> the first global step any rank reported in it."""
    per_epoch = steps_per_epoch(records)
    first: Dict[int, int] = {}
    for rec in records:
        attempt, step = int(rec.get("attempt") or 0), global_step(rec, per_epoch)
        if attempt >= 2 and step is not None:
            first[attempt] = min(first.get(attempt, step), step)
    return dict(sorted(first.items()))


def rank_step_times(records: Sequence[Mapping[str, Any]]) -> Dict[int, List[float]]:
    """Rank -> seconds per step, from the records' own `seconds` or from consecutive records."""
    own: Dict[int, List[float]] = {}
    for rec in records:
        if isinstance(rec.get("seconds"), (int, float)) and isinstance(rec.get("rank"), int):
            own.setdefault(rec["rank"], []).append(float(rec["seconds"]))
    derived = {rank: [dt for _, dt in pairs] for rank, pairs in step_times(records).items()}
    return {rank: own.get(rank) or derived.get(rank, []) for rank in sorted(set(own) | set(derived))}


def step_time_series(records: Sequence[Mapping[str, Any]]) -> List[Series]:
    """Seconds per step against the global step, per (rank, attempt)."""
    per_epoch = steps_per_epoch(records)
    out: Dict[Tuple[int, int], Series] = {}
    for rank, pairs in step_times(records).items():
        for rec, dt in pairs:
            step = global_step(rec, per_epoch)
            if step is None:
                continue
            attempt = int(rec.get("attempt") or 0)
            s = out.setdefault((rank, attempt), Series(rank, attempt))
            s.steps.append(step)
            s.values.append(dt)
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class Throughput:
    """Median rate per rank and their sum; `unit` is images/s with a known batch size, else steps/s."""

    unit: str
    per_rank: Dict[int, float]
    total: float
    batch_size: Optional[int]


def throughput(step_seconds: Mapping[int, Sequence[float]],
               batch_size: Optional[int]) -> Optional[Throughput]:
    per_rank = {rank: (batch_size or 1) / statistics.median(ts)
                for rank, ts in step_seconds.items() if ts and statistics.median(ts) > 0}
    if not per_rank:
        return None
    return Throughput("images/s" if batch_size else "steps/s", per_rank, sum(per_rank.values()), batch_size)


def five_numbers(values: Sequence[float]) -> Dict[str, float]:
    """min, quartiles, median, max of step times (for the table under the box plot)."""
    v = sorted(values)
    if len(v) == 1:
        return {"min": v[0], "q1": v[0], "median": v[0], "q3": v[0], "max": v[0]}
    q1, median, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return {"min": v[0], "q1": q1, "median": median, "q3": q3, "max": v[-1]}
