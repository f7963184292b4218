"""The progress observer of the log aggregator: `epoch: N step: M, loss is X` lines become records in
`JOB/metrics.jsonl` and feed the straggler detector; a flagged rank gets a note in job.log and the
stream, a record in `JOB/stragglers.jsonl`, and is handed to `on_straggler` (e.g. job.json)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Tuple, Union

from launcher.stragglers import DEFAULT_FACTOR, DEFAULT_WINDOW, Straggler, StragglerDetector
from launcher.workload.base import PROGRESS_MARK, parse_progress


class ProgressRecorder:
    """A `LineObserver` for progress lines (see the module docstring)."""

    mark = PROGRESS_MARK

    def __init__(self, metrics_file: Union[str, os.PathLike, None] = None, *,
                 straggler_factor: float = DEFAULT_FACTOR, straggler_window: int = DEFAULT_WINDOW,
                 stragglers_file: Union[str, os.PathLike, None] = None,
                 on_straggler: Optional[Callable[[Straggler], None]] = None):
        self._metrics_path = Path(metrics_file) if metrics_file else None
        self._metrics: Optional[IO[bytes]] = None
        self._detector = StragglerDetector(straggler_factor, straggler_window)
        self._stragglers_path = Path(stragglers_file) if stragglers_file else None
        self._on_straggler = on_straggler
        self._lock = threading.Lock()
        self.stragglers: List[Straggler] = []
        #: (attempt, rank) -> when its first progress line arrived (epoch seconds, launcher clock).
        self.first_seen: Dict[Tuple[int, int], float] = {}
        #: attempt -> the furthest (epoch, step in epoch) any rank reported.
        self.furthest: Dict[int, Tuple[int, int]] = {}

    def observe(self, source: str, host: str, rank: Optional[int], attempt: int, line: str
                ) -> Optional[str]:
        record = parse_progress(line)
        if record is None:
            return None
        record = {"rank": rank, "source": source, "host": host, "attempt": attempt, **record,
                  "time": round(time.time(), 3)}
        if rank is not None:
            with self._lock:
                self.first_seen.setdefault((attempt, rank), record["time"])
                where = (int(record["epoch"]), int(record["epoch_step"]))
                self.furthest[attempt] = max(self.furthest.get(attempt, where), where)
        if self._metrics_path is not None:
            if self._metrics is None or self._metrics.closed:
                self._metrics = open(self._metrics_path, "ab", buffering=1 << 16)
            self._metrics.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
        if rank is None:
            return None
        straggler = self._detector.feed(record)
        if straggler is None:
            return None
        self._report(straggler)
        return straggler.message()

    def _report(self, straggler: Straggler) -> None:
        with self._lock:
            self.stragglers.append(straggler)
        if self._stragglers_path is not None:
            try:
                with open(self._stragglers_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(straggler.to_dict(), separators=(",", ":")) + "\n")
            except OSError:
                pass
        if self._on_straggler is not None:
            try:
                self._on_straggler(straggler)
            except Exception:  # a failing observer must not stop the log writer
                pass

    def flush(self) -> None:
        if self._metrics is not None and not self._metrics.closed:
            self._metrics.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
