"""A rank's metrics JSONL read back (docs/workload-contract.md): its step records and its phase events.

Attempts append to the same file; their records are told apart by time (`since`), the way a user reading
the file after the job would.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional


def records(path: Path) -> List[dict]:
    """Every record of the file, in order (none when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps(path: Path, since: float = 0.0) -> List[dict]:
    """The per-step records (no `event`) written at or after `since` (epoch seconds)."""
    return [r for r in records(path) if "event" not in r and r["time"] >= since]


def events(path: Path, name: str, since: float = 0.0) -> List[dict]:
    """The `name` event records written at or after `since`."""
    return [r for r in records(path) if r.get("event") == name and r["time"] >= since]


def first_step_time(paths: Iterable[Path], since: float) -> Optional[float]:
    """When the last of the ranks (one file each) wrote its first step record at or after `since`; None
    while one of them has none."""
    times = []
    for path in paths:
        found = steps(path, since)
        if not found:
            return None
        times.append(found[0]["time"])
    return max(times) if times else None
