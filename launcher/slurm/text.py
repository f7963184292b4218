"""Slurm's text, read without running Slurm: host lists, `scontrol show node/job -o`, srun errors, sbatch.

Pure functions over the strings Slurm 22.05 prints, so the slurm backend can turn `SLURM_JOB_NODELIST`
into hosts, node names into the IP addresses ranks must be given, srun's stderr into the task that
really failed (with `--kill-on-bad-exit` srun itself exits 143), and `scontrol show job` into a state.
"""
from __future__ import annotations

import re
import signal as _signal
from itertools import product
from typing import Dict, List, NamedTuple, Optional, Tuple

JOB_STATE_FIELDS = ("JobState", "Reason", "ExitCode", "TimeLimit", "RunTime", "NodeList", "BatchHost")

ACTIVE_JOB_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                               "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT",
                               "STOPPED", "RESV_DEL_HOLD"})
"""Job states in which the job still holds, or waits for, its allocation."""

FINISHED_JOB_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                                 "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
"""Terminal job states; `scontrol show job` keeps them for MinJobAge seconds."""

_SIGNALS_BY_TEXT = {}
for _sig in _signal.Signals:
    _text = _signal.strsignal(_sig)
    if _text:
        _SIGNALS_BY_TEXT.setdefault(_text, int(_sig))

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_:/]*=")
_TASK_ERROR = re.compile(
    r"(?:\d+: )?srun: error: (?P<node>[^\s:]+): tasks? (?P<tasks>[0-9,\-]+): (?P<what>.+?)\s*")
_EXITED = re.compile(r"Exited with exit code (\d+)")
_SBATCH = re.compile(r"Submitted batch job (\d+)")
_PARSABLE = re.compile(r"(\d+)(?:;\S+)?")


def expand_nodelist(nodelist: str) -> List[str]:
    """Every host of a Slurm host list, in order: `n[1-3,5],gpu-[01-02],x` -> n1 n2 n3 n5 gpu-01 gpu-02 x.

    Ranges keep the zero padding of their lower bound; several bracket groups in one name expand as a
    product (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2). A malformed list raises ValueError.
    """
    hosts: List[str] = []
    for item in _split_top_level(nodelist.strip()):
        parts = re.split(r"(\[[^\[\]]*\])", item)
        if any(c in part for part in parts[::2] for c in "[]"):
            raise ValueError(f"unbalanced brackets in host list {nodelist!r}")
        choices = [_expand_brackets(part, nodelist) if part.startswith("[") else [part] for part in parts]
        hosts.extend("".join(combo) for combo in product(*choices))
    return hosts


def _split_top_level(text: str) -> List[str]:
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in host list {text!r}")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in host list {text!r}")
    items.append("".join(current))
    items = [item.strip() for item in items]
    if text and not all(items):
        raise ValueError(f"empty host name in host list {text!r}")
    return [item for item in items if item]


def _expand_brackets(group: str, nodelist: str) -> List[str]:
    values: List[str] = []
    for span in group[1:-1].split(","):
        low, sep, high = span.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"bad range [{span}] in host list {nodelist!r}")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"descending range [{span}] in host list {nodelist!r}")
        values.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return values


def parse_key_values(line: str) -> Dict[str, str]:
    """`Key=Value Key=Value ...` of one `scontrol show ... -o` line; values with spaces (`OS=Linux 6.1 #1`)
    keep them, since a word without `Key=` continues the previous value."""
    fields: Dict[str, str] = {}
    key: Optional[str] = None
    for word in line.split():
        match = _KEY.match(word)
        if match:
            key = match.group()[:-1]
            fields[key] = word[match.end():]
        elif key is not None:
            fields[key] = f"{fields[key]} {word}"
    return fields


def parse_node_addrs(text: str) -> Dict[str, str]:
    """NodeName -> NodeAddr from `scontrol show node -o` (one line per node)."""
    addrs: Dict[str, str] = {}
    for line in text.splitlines():
        fields = parse_key_values(line)
        if "NodeName" in fields:
            addrs[fields["NodeName"]] = fields.get("NodeAddr") or fields["NodeName"]
    return addrs


class TaskFailure(NamedTuple):
    """One `srun: error: NODE: task(s) IDS: WHAT` line: an exit code, or a signal (number) when srun
    printed a signal's text (`Killed`, `Terminated`, `Segmentation fault`); neither for other texts."""

    node: str
    tasks: Tuple[int, ...]
    exit_code: Optional[int]
    signal: Optional[int]
    line: str

    @property
    def signal_name(self) -> Optional[str]:
        """`SIGKILL` for signal 9, ...; None when the task exited."""
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def describe(self) -> str:
        """`exit code 3` or `signal 9 (SIGKILL)`, else srun's own words."""
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        if self.signal is not None:
            return f"signal {self.signal} ({self.signal_name})"
        return self.line.rsplit(": ", 1)[-1]


def parse_task_failures(stderr_text: str) -> List[TaskFailure]:
    """srun's task errors in the order srun printed them. With `--kill-on-bad-exit` the first one is the
    task whose end made srun stop the step; the `Terminated` ones after it are that stop."""
    failures = []
    for raw in stderr_text.splitlines():
        line = raw.rstrip()
        match = _TASK_ERROR.fullmatch(line)
        if not match:
            continue
        what = match.group("what")
        exited = _EXITED.fullmatch(what)
        exit_code = int(exited.group(1)) if exited else None
        sig = None if exited else _SIGNALS_BY_TEXT.get(what.replace(" (core dumped)", ""))
        tasks = _task_ids(match.group("tasks"))
        failures.append(TaskFailure(match.group("node"), tasks, exit_code, sig, line))
    return failures


def _task_ids(spec: str) -> Tuple[int, ...]:
    ids: List[int] = []
    for span in spec.split(","):
        low, _, high = span.partition("-")
        ids.extend(range(int(low), int(high or low) + 1))
    return tuple(ids)


def parse_job_state(text: str) -> Dict[str, str]:
    """Every field of `scontrol show job -o JOBID` (the first job line), with JobState, Reason, ExitCode,
    TimeLimit, RunTime, NodeList and BatchHost always present ("" when Slurm left one out, as for a
    pending job). Text with no job (`Invalid job id specified`) raises ValueError."""
    for line in text.splitlines():
        fields = parse_key_values(line)
        if "JobId" in fields:
            return {**dict.fromkeys(JOB_STATE_FIELDS, ""), **fields}
    raise ValueError(f"no job in scontrol output: {text.strip()[:200]!r}")


def parse_exit_code(value: str) -> Tuple[int, int]:
    """`ExitCode=143:0` -> (143, 0): the exit status and the signal that ended the job (0 when none)."""
    status, _, sig = value.partition(":")
    return int(status), int(sig or 0)


def time_limit_hit(state: Dict[str, str]) -> bool:
    """Whether the job's time limit ended it (JobState TIMEOUT, or Reason TimeLimit)."""
    return state.get("JobState") == "TIMEOUT" or state.get("Reason") == "TimeLimit"


def job_finished(state: Dict[str, str]) -> bool:
    """Whether the job has reached a terminal state."""
    return state.get("JobState") in FINISHED_JOB_STATES


def parse_sbatch_job_id(text: str) -> int:
    """The job id sbatch printed: `Submitted batch job 42`, or with `--parsable` `42` / `42;cluster`."""
    match = _SBATCH.search(text)
    if match:
        return int(match.group(1))
    for line in reversed(text.strip().splitlines()):
        match = _PARSABLE.fullmatch(line.strip())
        if match:
            return int(match.group(1))
    raise ValueError(f"no job id in sbatch output: {text.strip()[:200]!r}")


def time_limit_seconds(text: str) -> Optional[int]:
    """A time limit as sbatch `--time` takes it, in seconds: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS,
    DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS; None for UNLIMITED or infinite."""
    text = text.strip()
    if text in ("UNLIMITED", "infinite"):
        return None
    days, dash, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if dash:
        units = (3600, 60, 1)[:len(parts)]  # after a day count: hours, then minutes, then seconds
        return int(days) * 86400 + sum(p * u for p, u in zip(parts, units))
    units = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    return sum(p * u for p, u in zip(parts, units))
