"""A rank's metrics JSONL: one record per training step, and `event` records marking the phases of a run.

The launcher reads the events to account for the time a failure costs (how long a restarted rank took
to import, form the cluster, load its checkpoint and finish its first step); the record formats are in
docs/workload-contract.md. Standard library only, so any Python program can write the same file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

PROCESS_START = "process_start"
IMPORTS = "imports"
CLUSTER = "cluster"
CHECKPOINT_LOADED = "checkpoint_loaded"
FIRST_STEP = "first_step"
SAVED_ON_REQUEST = "saved_on_request"
EVENTS = (PROCESS_START, IMPORTS, CLUSTER, CHECKPOINT_LOADED, FIRST_STEP, SAVED_ON_REQUEST)


def process_start_time(pid: str = "self") -> Optional[float]:
    """When the kernel started this process, in epoch seconds (10 ms resolution); None without /proc.

    Earlier than anything the process itself can observe: interpreter start-up and module imports
    are inside it. Field 22 of /proc/PID/stat counts clock ticks since boot (CLOCK_BOOTTIME).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


class MetricsLog:
    """Appends records to a rank's JSONL, flushed line by line; events before `open` wait in memory.

    Every event has `event`, `time` (epoch seconds), `since_start` (seconds since the process
    started) and, but the first, `seconds` (since the previous event: the phase it closes).
    """

    def __init__(self, started: Optional[float] = None):
        self.started = started if started is not None else (process_start_time() or time.time())
        self.path: Optional[Path] = None
        self._file = None
        self._pending: List[str] = []
        self._last_event: Optional[float] = None

    def open(self, path: os.PathLike) -> None:
        """Start appending to `path` (its folder is created); events recorded so far are written first."""
        self.close()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        pending, self._pending = self._pending, []
        for line in pending:
            self._write(line)

    def step(self, *, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        """The record of one training step (`step` is the global step, `seconds` the step's wall time)."""
        self._write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                                "seconds": round(seconds, 6), "time": time.time()}))

    def event(self, name: str, *, at: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
        """Record event `name` that happened at `at` (default now), with `fields`; returns the record."""
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}; one of {', '.join(EVENTS)}")
        now = time.time() if at is None else at
        record: Dict[str, Any] = {"event": name, "time": now, "since_start": round(now - self.started, 6)}
        if self._last_event is not None:
            record["seconds"] = round(now - self._last_event, 6)
        self._last_event = now
        record.update({k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()})
        line = json.dumps(record)
        if self._file is None:
            self._pending.append(line)
        else:
            self._write(line)
        return record

    def _write(self, line: str) -> None:
        if self._file is None:
            raise RuntimeError("metrics log written before open()")
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
