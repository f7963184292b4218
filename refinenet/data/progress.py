"""A plain-text progress bar on stderr: redrawn in place on a terminal; elsewhere (a log file, a
launcher's pipe) one line at 0, 25, 50, 75 and 100 %."""
from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total); prints `label [#####.....] done/total` at most every `interval` s."""

    def __init__(self, label: str, stream=None, width: int = 30, interval: float = 0.2):
        self.label, self.width, self.interval = label, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        finished = done >= total
        if self.tty:
            now = time.monotonic()
            if not finished and now - self._last < self.interval:
                return
            self._last = now
            self.stream.write(f"\r{self._line(done, total)}" + ("\n" if finished else ""))
        else:
            quarter = 4 if finished else min(3, 4 * done // max(total, 1))
            if quarter <= self._last_quarter:
                return
            self._last_quarter = quarter
            self.stream.write(self._line(done, total) + "\n")
        self.stream.flush()

    def _line(self, done: int, total: int) -> str:
        filled = self.width * done // max(total, 1)
        return f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
