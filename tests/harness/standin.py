"""The stand-in workload behind a host's `python`, its settings, and checks of what it printed.

`install(folder)` writes `folder/python`, the one wrapper: `python -m refinenet.train ...`,
`-m refinenet.scheduler` and `-m refinenet.evaluate` run the stand-in (tests/harness/standin_workload.py),
a warm interpreter of refinenet (launcher/hostside/warm.py: `-c ... --main refinenet.train ...`) fails at
once, so a restart's processes start cold, through this wrapper, as a host without warm starts would,
anything else (the launcher's agent and host checks, `python -m refinenet.manifest scan`) the real
interpreter. Name it as every host's `python`; what the ranks do is set by the job's environment
(`steps_env`, `flood_env`; every setting is described in standin_workload.py).
"""
from __future__ import annotations

import re
import shlex
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

PROGRAM = Path(__file__).resolve().with_name("standin_workload.py")

WRAPPER = """#!/bin/bash
case " $* " in
  *" --main refinenet."*) echo "stand-in: no warm interpreter of refinenet here" >&2; exit 1;;
esac
if [ "$1" = "-m" ]; then
  case "$2" in
    refinenet.train) shift 2; exec {py} {program} rank "$@";;
    refinenet.scheduler) shift 2; exec {py} {program} scheduler "$@";;
    refinenet.evaluate) shift 2; exec {py} {program} eval "$@";;
  esac
fi
exec {py} "$@"
"""


def install(folder: Path, interpreter: str = sys.executable) -> str:
    """Write the `python` wrapper into `folder`; its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    wrapper.write_text(WRAPPER.format(py=shlex.quote(interpreter), program=shlex.quote(str(PROGRAM))))
    wrapper.chmod(0o755)
    return str(wrapper)


def steps_env(step_s: float, steps: int = 0, **settings: object) -> Dict[str, str]:
    """Job environment for step mode: a step line every `step_s` s, `steps` per epoch (0: until killed);
    `settings` adds others by their name without the prefix (`fail_rank=1` is STANDIN_FAIL_RANK=1)."""
    env = {"STANDIN_MODE": "steps", "STANDIN_STEP_S": str(step_s), "STANDIN_STEPS": str(steps)}
    env.update({f"STANDIN_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def flood_env(seconds: float, max_lines: int = 0) -> Dict[str, str]:
    """Job environment for flood mode: checksummed lines as fast as possible for `seconds`, at most
    `max_lines` of them per rank (0: no limit)."""
    return {"STANDIN_MODE": "flood", "STANDIN_FLOOD_S": str(seconds), "STANDIN_FLOOD_LINES": str(max_lines)}


STEP = re.compile(r"epoch: \d+ step: (\d+), loss is ")
_FLOOD = re.compile(r"standin r(\d+) #(\d+) (\S+) len=(\d+) crc=([0-9a-f]{8})")
_DONE = re.compile(r"standin done r(\d+) lines=(\d+)")


def flood_line(rank: int, seq: int, payload: str) -> str:
    """One flood line as the stand-in prints it (without the newline)."""
    body = f"standin r{rank} #{seq} {payload}"
    return f"{body} len={len(body)} crc={zlib.crc32(body.encode()):08x}"


def step_numbers(lines: Iterable[str]) -> List[int]:
    """The step numbers of the `epoch: E step: N, loss is X` lines among `lines`."""
    return [int(m.group(1)) for m in map(STEP.search, lines) if m]


@dataclass
class FloodCheck:
    """What `check_flood_lines` found: per rank the lines seen and announced, and every problem."""

    seen: Dict[int, int] = field(default_factory=dict)
    announced: Dict[int, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(max(0, n - self.seen.get(r, 0)) for r, n in self.announced.items())

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)
        elif len(self.problems) == 20:
            self.problems.append("(more problems not listed)")


def check_flood_lines(lines: Iterable[str], where: str, only_rank: Optional[int] = None,
                      check: Optional[FloodCheck] = None) -> FloodCheck:
    """Check flood output: every stand-in line whole (length and crc match, nothing before or after
    it on the line), per rank numbered 0, 1, 2, ... with no gap or repeat, and ending with its `done`
    line giving the count. Other lines (attempt headers, `scheduler up`) are skipped. A `[r<r> host] `
    prefix (job.log) is stripped. `only_rank` makes a line of any other rank a problem (rank logs)."""
    check = check or FloodCheck()
    expected: Dict[int, int] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1]
        if "standin" not in line:
            continue
        done = _DONE.fullmatch(line)
        if done:
            rank, count = int(done.group(1)), int(done.group(2))
            if only_rank is not None and rank != only_rank:
                check.problem(f"{where}:{number}: line of rank {rank} in the log of rank {only_rank}")
            if expected.get(rank, 0) != count:
                check.problem(f"{where}:{number}: rank {rank} announced {count} lines, "
                              f"{expected.get(rank, 0)} seen in order")
            check.announced[rank] = count
            continue
        m = _FLOOD.fullmatch(line)
        if not m or flood_line(int(m.group(1)), int(m.group(2)), m.group(3)) != line:
            check.problem(f"{where}:{number}: not one whole line: {line[:160]!r}")
            continue
        rank, seq = int(m.group(1)), int(m.group(2))
        if only_rank is not None and rank != only_rank:
            check.problem(f"{where}:{number}: line of rank {rank} in the log of rank {only_rank}")
        if seq != expected.get(rank, 0):
            check.problem(f"{where}:{number}: rank {rank} line #{seq} where #{expected.get(rank, 0)} was due")
        expected[rank] = seq + 1
        check.seen[rank] = check.seen.get(rank, 0) + 1
    for rank, n in expected.items():
        if rank not in check.announced:
            check.problem(f"{where}: rank {rank} has no done line after {n} lines")
    return check
