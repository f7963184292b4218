"""Which rank is stuck, and where: every rank's stack grouped by identity, the odd ones named.

Fed the records of `launcher.hostside.stacks.capture` keyed by (rank, host), `analyse` compares the
ranks' **main threads**: a rank's stack is the main thread's Python frames (function, file relative to
its package root, line; innermost first), so the same code at the same place groups together whatever
folder each host installed it in. Other threads (data workers, MindSpore's own threads) move with
timing and would split identical ranks apart: they are saved, not compared. Where a main thread has
no Python frame, the first thread that has one stands in for it. Native frames (py-spy `--native`)
are not compared either; they only name the operation a rank waits in (`AllReduce`).

Each Python frame is classified by file path and function:

- framework: MindSpore (`mindspore/...`): communication (`communication/`, `parallel/`), graph
  execution (`common/api.py`, `graph/`, `nn/cell.py`, `ops/`), its training loop (`train/`), its data
  pipeline (`dataset/`);
- stdlib: the Python installation (`.../lib/pythonX.Y/`, not site- or dist-packages);
- library: other installed packages (site- or dist-packages); workload: everything else, and
  `refinenet/` wherever it is installed.

A rank *waits in the framework* when its innermost Python frame is MindSpore's, or the standard
library's in a waiting module (`threading`, `queue`, `multiprocessing`, `concurrent`, `selectors`,
`socket`, `subprocess`, `asyncio`, `ssl`); otherwise it is *in workload code* (its own functions,
libraries it calls, `time.sleep` in its own function).

Suspects: when one group holds a strict majority of the ranks with a stack, every rank outside it.
Without one (2 ranks, 1 vs 1; 3 ways of 2), the ranks in workload code while others wait in the
framework; when every rank waits, or none does, it cannot tell and says so. When all ranks with a
stack wait alike in the framework, the ranks without a stack (py-spy timed out, not permitted, the
process gone) are the suspects. Ranks without a stack never decide a majority.

Saved per capture: `JOB/stacks/attempt_<n>-<YYYYmmdd-HHMMSS>/` with `rank_<r>.json` (the host's record,
plus rank, host and attempt), `groups.json` (`StackReport.to_dict()`, attempt, time) and `summary.txt`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Frame", "RankStack", "StackGroup", "StackReport", "SavedCapture", "analyse", "save", "load",
           "captures", "STACKS_DIR"]

STACKS_DIR = "stacks"
GROUPS_FILE = "groups.json"
SUMMARY_FILE = "summary.txt"
FORMAT = "refinenet-stack-groups/1"

NATIVE, FRAMEWORK, STDLIB, LIBRARY, WORKLOAD = "native", "framework", "stdlib", "library", "workload"
WORKLOAD_PACKAGES = ("refinenet",)
STDLIB_WAITS = ("threading", "queue", "multiprocessing", "concurrent", "selectors", "socket", "subprocess",
                "asyncio", "ssl")
_STDLIB = re.compile(r"/lib/python\d+(\.\d+)?/(?!(site|dist)-packages/)")
_INSTALLED = re.compile(r"/(site|dist)-packages/")
_COLLECTIVE = re.compile(r"(AllReduce|AllGather|ReduceScatter|Broadcast|All[Tt]o[Aa]ll[Vv]?|Barrier)")
_MINDSPORE_PARTS = (("MindSpore communication", ("communication/", "parallel/")),
                    ("MindSpore graph execution",
                     ("common/api.py", "graph/", "nn/cell.py", "ops/", "_extends/")),
                    ("MindSpore's training loop", ("train/",)),
                    ("MindSpore's data pipeline", ("dataset/",)))
_FOLDER = re.compile(r"^attempt_(\d+)-(\d{8}-\d{6})(?:-\d+)?$")


@dataclass(frozen=True)
class Frame:
    """One frame of a stack: `module_file` is the file relative to its package root."""

    function: str
    file: str
    module_file: str
    line: int
    native: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Frame:
        path = str(d.get("file") or "")
        return cls(function=str(d.get("function") or "?"), file=path,
                   module_file=str(d.get("module_file") or os.path.basename(path)),
                   line=int(d.get("line") or 0), native=bool(d.get("native")))

    @property
    def top(self) -> str:
        """The top-level package or module the file belongs to (`mindspore`, `threading`)."""
        first = self.module_file.split("/", 1)[0]
        return first[:-3] if first.endswith(".py") else first

    @property
    def kind(self) -> str:
        if self.native:
            return NATIVE
        if self.top == "mindspore" or self.top.startswith("mindspore_"):
            return FRAMEWORK
        if self.top in WORKLOAD_PACKAGES:
            return WORKLOAD
        if _STDLIB.search(self.file) or self.file.startswith("<frozen"):
            return STDLIB
        if _INSTALLED.search(self.file):
            return LIBRARY
        return WORKLOAD

    @property
    def waits(self) -> bool:
        """A frame that means waiting inside the framework when it is the innermost Python frame."""
        return self.kind == FRAMEWORK or (self.kind == STDLIB and self.top in STDLIB_WAITS)

    @property
    def category(self) -> str:
        """The part of MindSpore a framework frame is in (`MindSpore graph execution`); else its kind."""
        if self.kind != FRAMEWORK:
            return self.kind
        if _COLLECTIVE.search(self.function):
            return "MindSpore communication"
        rest = self.module_file.split("/", 1)[1] if "/" in self.module_file else ""
        for label, prefixes in _MINDSPORE_PARTS:
            if rest.startswith(prefixes):
                return label
        return "MindSpore"

    def where(self) -> str:
        return f"`{self.function}` ({self.module_file}:{self.line})"


@dataclass(frozen=True)
class RankStack:
    """One rank's capture as the analysis sees it: `frames` are one thread's, innermost first."""

    rank: int
    host: str
    status: str
    reason: str = ""
    thread: Optional[str] = None
    frames: Tuple[Frame, ...] = ()
    proc: Optional[Mapping[str, Any]] = None

    @classmethod
    def from_record(cls, rank: int, host: str, record: Mapping[str, Any]) -> RankStack:
        status = str(record.get("status") or "failed")
        threads = [t for t in record.get("threads") or () if isinstance(t, Mapping)]
        chosen = _chosen_thread(threads)
        raw = (chosen or {}).get("frames") or ()
        frames = tuple(Frame.from_dict(f) for f in raw if isinstance(f, Mapping))
        reason = str(record.get("reason") or "")
        if status == "ok" and not any(not f.native for f in frames):
            status, reason = "no_python_frames", "no thread has a Python frame"
        proc = record.get("proc") if isinstance(record.get("proc"), Mapping) else None
        return cls(rank=int(rank), host=str(host), status=status, reason=reason,
                   thread=(chosen or {}).get("name"), frames=frames, proc=proc)

    @property
    def python(self) -> Tuple[Frame, ...]:
        return tuple(f for f in self.frames if not f.native)

    @property
    def signature(self) -> Optional[Tuple[Tuple[str, str, int], ...]]:
        """What identical stacks share; None when there is no stack."""
        if self.status != "ok":
            return None
        return tuple((f.function, f.module_file, f.line) for f in self.python)

    @property
    def waiting(self) -> bool:
        """Its innermost Python frame waits inside the framework (see the module's docstring)."""
        return bool(self.python) and self.python[0].waits

    @property
    def workload_frame(self) -> Optional[Frame]:
        """The innermost frame of the workload's own code (else of a library it calls, else any)."""
        for kind in (WORKLOAD, LIBRARY):
            for f in self.python:
                if f.kind == kind:
                    return f
        return self.python[0] if self.python else None

    @property
    def operation(self) -> Optional[str]:
        """The collective operation a native frame of the framework names (`AllReduce`), if any."""
        for f in self.frames:
            if f.native:
                m = _COLLECTIVE.search(f.function)
                if m:
                    return m.group(1)
        for f in self.python:
            m = _COLLECTIVE.search(f.function) if f.kind == FRAMEWORK else None
            if m:
                return m.group(1)
        return None

    def where(self) -> str:
        """`in load_batch (pipeline.py:88)`; `in AllReduce, from train_step (x.py:40)`;
        `in Barrier.wait (threading.py:697), from wait_for_peers (peers.py:25)`."""
        if not self.python:
            return "with no Python frame"
        own = self.workload_frame
        if not self.waiting:
            return f"in {own.where()}" if own else "in ?"
        what = self.operation or self._waited_in()
        if own is None or own.kind not in (WORKLOAD, LIBRARY):
            return f"in {what}"
        return f"in {what}, from {own.where()}"

    def _waited_in(self) -> str:
        """MindSpore's part (`MindSpore graph execution`), or the standard library's function the
        workload called (`Barrier.wait`)."""
        inner = self.python[0]
        if inner.kind == FRAMEWORK:
            return f"{inner.category} ({inner.where()})"
        entry = inner
        for f in self.python:
            if not f.waits:
                break
            entry = f
        return entry.where()

    def proc_text(self) -> str:
        """/proc's view of a rank without a stack: `state S (sleeping), wchan futex_wait, syscall futex`."""
        p = self.proc or {}
        parts = [f"{k} {p[k]}" for k in ("state", "wchan", "syscall") if p.get(k)]
        return ", ".join(parts)


def _chosen_thread(threads: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The main thread when it has a Python frame, else the first thread that has one."""
    def has_python(t):
        return any(isinstance(f, Mapping) and not f.get("native") for f in t.get("frames") or ())

    main = [t for t in threads if t.get("main")]
    for t in main + [t for t in threads if not t.get("main")]:
        if has_python(t):
            return t
    return main[0] if main else (threads[0] if threads else None)


@dataclass(frozen=True)
class StackGroup:
    """Ranks whose stacks are identical; `stack` is the lowest rank's, standing for all of them."""

    members: Tuple[Tuple[int, str], ...]
    stack: RankStack

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def ranks(self) -> Tuple[int, ...]:
        return tuple(r for r, _ in self.members)


@dataclass(frozen=True)
class StackReport:
    """Groups (largest first), ranks without a stack, the suspects and on what basis they were found.

    `basis`: `majority` (outside the largest group, which holds more than half), `workload` (no
    majority; the ranks in workload code), `no_stack` (everyone else waits alike), `alike` (one
    group, no rank stands out), `only` (a job of one rank), `undetermined`, or `none` (no rank has
    a stack).
    """

    groups: Tuple[StackGroup, ...]
    unknown: Tuple[RankStack, ...]
    suspects: Tuple[Tuple[int, str], ...]
    basis: str
    note: str = ""

    @property
    def stacked(self) -> int:
        return sum(g.size for g in self.groups)

    def group_of(self, rank: int) -> Optional[StackGroup]:
        return next((g for g in self.groups if rank in g.ranks), None)

    def summary(self) -> str:
        """Root-cause text: the suspect rank(s) with their innermost frames and where the others are."""
        lines: List[str] = []
        suspects = set(self.suspects)
        odd = [g for g in self.groups if set(g.members) <= suspects]
        rest = [g for g in self.groups if not set(g.members) & suspects]
        others = sum(g.size for g in rest)
        for group in odd:
            line = f"{_who(group.members)}: {group.stack.where()}"
            if rest:
                line += f", {_others(rest, others)}"
            lines.append(line)
        for stack in self.unknown:
            line = f"{_who([(stack.rank, stack.host)])}: no stack ({stack.reason or stack.status})"
            if stack.proc_text():
                line += f"; /proc: {stack.proc_text()}"
            lines.append(line)
        if self.basis == "no_stack" and rest:
            lines.append(f"every rank with a stack is {rest[0].stack.where()}")
        if self.basis == "alike":
            lines.insert(0, f"all {self.stacked} ranks {self.groups[0].stack.where()}: no rank stands out")
        if self.basis in ("undetermined", "none"):
            head = "cannot tell which rank is stuck" + (f": {self.note}" if self.note else "")
            lines = [head] + [f"{_who(g.members)}: {g.stack.where()}" for g in self.groups] + lines
        elif self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        def stack(s: RankStack) -> Dict[str, Any]:
            return {"rank": s.rank, "host": s.host, "status": s.status, "reason": s.reason,
                    "thread": s.thread, "where": s.where(), "waiting": s.waiting, "operation": s.operation,
                    "frames": [{"function": f.function, "module_file": f.module_file, "line": f.line,
                                "kind": f.kind} for f in s.python]}

        return {"format": FORMAT, "basis": self.basis, "note": self.note,
                "suspects": [{"rank": r, "host": h} for r, h in self.suspects],
                "groups": [{"size": g.size, "members": [{"rank": r, "host": h} for r, h in g.members],
                            "stack": stack(g.stack)} for g in self.groups],
                "unknown": [dict(stack(s), proc=s.proc) for s in self.unknown],
                "summary": self.summary()}


def _who(members: Sequence[Tuple[int, str]]) -> str:
    """`rank 3 on hostb`, `ranks 1, 5 on hostb and rank 2 on hostc`."""
    by_host: Dict[str, List[int]] = {}
    for rank, host in sorted(members):
        by_host.setdefault(host, []).append(rank)
    return " and ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} on {host}"
                        for host, rs in by_host.items())


def _others(rest: Sequence[StackGroup], count: int) -> str:
    noun = "rank" if count == 1 else "ranks"
    if len(rest) == 1:
        return f"{count} other {noun} {rest[0].stack.where()}"
    return f"{count} other {noun} in {len(rest)} places (most, {rest[0].size}: {rest[0].stack.where()})"


def analyse(records: Mapping[Tuple[int, str], Mapping[str, Any]]) -> StackReport:
    """Group the ranks' stacks and find the suspects (see the module's docstring for the rules)."""
    stacks = [RankStack.from_record(rank, host, rec) for (rank, host), rec in sorted(records.items())]
    unknown = tuple(s for s in stacks if s.signature is None)
    by_sig: Dict[Tuple, List[RankStack]] = {}
    for s in stacks:
        if s.signature is not None:
            by_sig.setdefault(s.signature, []).append(s)
    groups = tuple(sorted((StackGroup(tuple((s.rank, s.host) for s in members), members[0])
                           for members in by_sig.values()), key=lambda g: (-g.size, g.ranks)))
    stacked = sum(g.size for g in groups)
    if not groups:
        return StackReport(groups, unknown, (), "none", "no rank's stack could be taken")
    if len(groups) == 1:
        if unknown and groups[0].stack.waiting:
            return StackReport(groups, unknown, tuple((s.rank, s.host) for s in unknown), "no_stack")
        if stacked == 1 and not unknown:
            return StackReport(groups, unknown, groups[0].members, "only")
        if stacked == 1:
            return StackReport(groups, unknown, (), "undetermined", "only one rank has a stack")
        return StackReport(groups, unknown, (), "alike")
    largest = groups[0]
    if 2 * largest.size > stacked:
        suspects = tuple(m for g in groups[1:] for m in g.members)
        note = ""
        if not largest.stack.waiting and all(g.stack.waiting for g in groups[1:]):
            note = (f"the {largest.size} others are in workload code while these wait in the framework: "
                    "the others may be the ones stuck")
        return StackReport(groups, unknown, suspects, "majority", note)
    working = [g for g in groups if not g.stack.waiting]
    if working and len(working) < len(groups):
        return StackReport(groups, unknown, tuple(m for g in working for m in g.members), "workload")
    why = "no majority, and every rank waits in the framework" if not working else (
        "no majority, and every rank is in workload code")
    return StackReport(groups, unknown, (), "undetermined", why)


@dataclass(frozen=True)
class SavedCapture:
    """One capture as saved in the job folder."""

    folder: Path
    attempt: int
    time: float
    report: StackReport
    records: Dict[Tuple[int, str], Dict[str, Any]]


def _folder_name(attempt: int, when: float) -> str:
    return f"attempt_{int(attempt)}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def save(report: StackReport, records: Mapping[Tuple[int, str], Mapping[str, Any]],
         job_dir: Union[str, os.PathLike], attempt: int, when: float) -> Path:
    """Write the capture under `JOB/stacks/` (see the module's docstring); the folder appears whole
    (written beside it, then renamed), and a second capture in the same second gets `-2`, `-3`...."""
    root = Path(job_dir) / STACKS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = _folder_name(attempt, when)
    tmp = root / f".{name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for (rank, host), record in sorted(records.items()):
        doc = dict(record, rank=rank, host=host, attempt=attempt)
        (tmp / f"rank_{rank}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    groups = dict(report.to_dict(), attempt=attempt, time=when)
    (tmp / GROUPS_FILE).write_text(json.dumps(groups, indent=1) + "\n", encoding="utf-8")
    (tmp / SUMMARY_FILE).write_text(report.summary() + "\n", encoding="utf-8")
    for n in range(1, 1000):
        final = root / (name if n == 1 else f"{name}-{n}")
        try:
            os.rename(tmp, final)  # fails when `final` exists and is not empty
            return final
        except OSError:
            if not final.exists():
                raise
    raise FileExistsError(f"{root / name}: too many captures in one second")


def load(folder: Union[str, os.PathLike]) -> SavedCapture:
    """A saved capture: its records (from `rank_<r>.json`) and their analysis, made again from them.

    Raises OSError or ValueError when the folder or a rank file cannot be read."""
    folder = Path(folder)
    records: Dict[Tuple[int, str], Dict[str, Any]] = {}
    for path in sorted(folder.glob("rank_*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("rank"), int):
            raise ValueError(f"{path}: not a rank's stack record")
        records[(doc["rank"], str(doc.get("host", "")))] = doc
    if not records and not (folder / GROUPS_FILE).is_file():
        raise ValueError(f"{folder}: no rank_<r>.json and no {GROUPS_FILE}")
    attempt, when = _from_name(folder.name)
    try:
        groups = json.loads((folder / GROUPS_FILE).read_text(encoding="utf-8"))
        attempt = int(groups.get("attempt", attempt))
        when = float(groups.get("time", when))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return SavedCapture(folder, attempt, when, analyse(records), records)


def _from_name(name: str) -> Tuple[int, float]:
    m = _FOLDER.match(name)
    if not m:
        return 0, 0.0
    return int(m.group(1)), time.mktime(time.strptime(m.group(2), "%Y%m%d-%H%M%S"))


def captures(job_dir: Union[str, os.PathLike]) -> List[Path]:
    """The job's capture folders, oldest first."""
    root = Path(job_dir) / STACKS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _FOLDER.match(p.name)]
    return sorted(found, key=lambda p: (_from_name(p.name)[1], p.name))
