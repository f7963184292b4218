"""The line format of a job's logs: file names, prefixes, attempt headers, and reading them back.

Written by the aggregator (`launcher.logs.aggregator`), read by `logs`, `status`, `top` and the report:

    rank_<r>.log   the rank's output exactly as it printed it, with an `=== attempt N started ... ===`
                   line at the start of each attempt, so `tail -f` and `grep` work across restarts
    <name>.log     the same for an auxiliary process (e.g. `scheduler.log`)
    job.log        every line of every process in arrival order, prefixed `[r<rank> <host>] ` or
                   `[<name> <host>] `, plus the attempt lines and `[launcher] ` notes

MindSpore's own INFO/DEBUG log lines (`[INFO] DISTRIBUTED(pid,tid,python):2026-... [file] ...`) stay in
the files but are left out of the live stream (and of `status`'s last line).
"""
from __future__ import annotations

import os
import re
import time
from typing import Iterable, List, Optional, Set, Union

from launcher.errors import BadInput

JOB_LOG = "job.log"
ATTEMPT_HEADER = "=== attempt {number} started {time} ==="
_HEADER_RE = re.compile(r"^=== attempt (\d+) started [^=]*===$")
_PREFIX_RE = re.compile(r"^\[([^\s\]]+) [^\]]*\] ")
_RANK_SOURCE_RE = re.compile(r"^r(\d+)$")
_FRAMEWORK_RE = re.compile(r"^\[(?:INFO|DEBUG)\] [A-Z][A-Z0-9_]*\([^)]*\):\d{4}-\d\d-\d\d-")


LAUNCHER_SOURCE = "launcher"


def is_framework_log(line: str) -> bool:
    """True for a MindSpore C++ log line at INFO or DEBUG level (kept in files, not streamed)."""
    return line.startswith(("[INFO] ", "[DEBUG] ")) and _FRAMEWORK_RE.match(line) is not None


def rank_log_name(rank: int) -> str:
    return f"rank_{rank}.log"


def rank_source(rank: int) -> str:
    """The name of a rank in prefixes and process records: `r<rank>`."""
    return f"r{rank}"


def line_prefix(source: str, host: str) -> str:
    return f"[{source} {host}] "


def attempt_header(number: int, at: Optional[float] = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if at is None else at))
    return ATTEMPT_HEADER.format(number=number, time=stamp)


def parse_attempt_header(line: str) -> Optional[int]:
    """The attempt number if `line` is an attempt header, else None."""
    m = _HEADER_RE.match(line)
    return int(m.group(1)) if m else None


def parse_source(line: str) -> Optional[str]:
    """The source (`r3`, `scheduler`) of a prefixed `job.log` line, or None."""
    m = _PREFIX_RE.match(line)
    return m.group(1) if m else None


def source_rank(source: Optional[str]) -> Optional[int]:
    m = _RANK_SOURCE_RE.match(source or "")
    return int(m.group(1)) if m else None


def parse_ranks(text: str) -> Set[int]:
    """`0,3` or `0-3,6` -> a set of ranks; `BadInput` naming `--ranks` otherwise."""
    ranks: Set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise BadInput(f"--ranks: {part!r} in {text!r} is not a rank or a range like 0-3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BadInput(f"--ranks: range {part!r} is empty")
        ranks.update(range(lo, hi + 1))
    return ranks


def tail_lines(path: Union[str, os.PathLike], n: int, max_bytes: int = 1 << 16) -> List[str]:
    """The last `n` whole lines of a text file (reads at most `max_bytes` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")
    if start > 0:
        lines = lines[1:]
    if lines and lines[-1] == "":
        lines.pop()
    return lines[-n:] if n > 0 else []


class JobLogFilter:
    """Decides which `job.log` lines to show: by rank (`r<N>` sources) and by attempt.

    Feed it every line in order (it follows the attempt headers); `keep(line)` says whether to show it.
    """

    def __init__(self, ranks: Optional[Iterable[int]] = None, attempt: Optional[int] = None):
        self.ranks = None if ranks is None else frozenset(ranks)
        self.attempt = attempt
        self.current_attempt = 0

    def keep(self, line: str) -> bool:
        number = parse_attempt_header(line)
        if number is not None:
            self.current_attempt = number
            return self.attempt is None or number == self.attempt
        if self.attempt is not None and self.current_attempt != self.attempt:
            return False
        if self.ranks is None:
            return True
        rank = source_rank(parse_source(line))
        return rank is not None and rank in self.ranks
