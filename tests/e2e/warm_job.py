"""A small data-parallel training attempt on this machine, started the way a host agent starts one:
MindSpore's scheduler and one worker per rank (the `dynamic` backend), each process either a new
interpreter (cold) or handed to a warm interpreter (launcher/hostside/warm.py) made ready earlier.

Every output line is timestamped on arrival, so callers can time an attempt from its start to its
first training step. Used by tests/e2e/test_warm_start.py and benchmarks/warm_start.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.hostside import warm

REPO = Path(__file__).resolve().parents[2]
#: What a worker's warm interpreter imports: everything `refinenet.train` imports before its first step.
RANK_PRELOAD = ("mindspore", "mindspore.communication", "mindspore.dataset", "refinenet.train",
                "refinenet.model", "refinenet.data.pipeline", "refinenet.loss")
SCHEDULER_PRELOAD = ("mindspore", "mindspore.communication", "refinenet.scheduler")
FIRST_STEP = re.compile(r"^epoch: \d+ step: 1,")


def job_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The job-wide environment (a warm interpreter's start): as the launcher's base environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "REFINENET_", "GLOG_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", GLOG_v="3", ONEDNN_MAX_CPU_ISA="AVX2", MS_TOPO_TIMEOUT="60",
               MS_NODE_TIMEOUT="10")
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ProcessSpec:
    """One process of an attempt: its python command line (after `python`), full environment, main module."""

    name: str
    argv: Tuple[str, ...]
    env: Mapping[str, str]
    main: str
    preload: Tuple[str, ...]


def attempt_processes(port: int, ranks: int, train_args: Sequence[str], env: Mapping[str, str],
                      rank_env: Optional[Mapping[str, str]] = None) -> List[ProcessSpec]:
    """The scheduler and `ranks` workers of one attempt on this host (every rank a local rank of it)."""
    sched = dict(env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM=str(ranks))
    procs = [ProcessSpec("scheduler", ("-m", "refinenet.scheduler"), dict(sched, MS_ROLE="MS_SCHED"),
                         "refinenet.scheduler", SCHEDULER_PRELOAD)]
    for rank in range(ranks):
        worker = dict(sched, **(rank_env or {}), MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank),
                      LOCAL_RANK=str(rank))
        procs.append(ProcessSpec(f"r{rank}", ("-m", "refinenet.train", *train_args), worker,
                                 "refinenet.train", RANK_PRELOAD))
    return procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (its threads included, its children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Running:
    """A started process and its output lines, each with its arrival time (time.monotonic()); the CPU
    seconds it had used when it started its command and when its first training step line came."""

    name: str
    popen: subprocess.Popen
    started: float = 0.0
    lines: List[Tuple[float, str]] = field(default_factory=list)
    cpu_at_start: float = 0.0
    cpu_at_first_step: Optional[float] = None

    def follow(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(self.popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.cpu_at_first_step is None and self.started and FIRST_STEP.search(line):
                try:
                    self.cpu_at_first_step = cpu_seconds(self.popen.pid)
                except OSError:
                    pass
            self.lines.append((time.monotonic(), line))

    @property
    def cpu_to_first_step(self) -> Optional[float]:
        """CPU seconds from the start of its command to its first training step."""
        if self.cpu_at_first_step is None:
            return None
        return self.cpu_at_first_step - self.cpu_at_start

    def first(self, pattern: re.Pattern, after: float = 0.0) -> Optional[float]:
        return next((t for t, line in list(self.lines) if t >= after and pattern.search(line)), None)

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))


class WarmSlot:
    """A warm interpreter for one process of a later attempt (the process `spec` stands for: its name,
    main module and preload; its command line and per-attempt environment come when it is handed)."""

    def __init__(self, spec: ProcessSpec, start_env: Mapping[str, str], cwd: Path):
        self.name = spec.name
        self.zygote = warm.Zygote.start(spec.name, sys.executable, spec.preload, main=spec.main,
                                        env=dict(start_env), cwd=str(cwd), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self.running = Running(spec.name, self.zygote.popen)
        self.running.follow()

    def wait_ready(self, timeout: float = 300) -> dict:
        return self.zygote.wait_ready(timeout)

    def close(self) -> None:
        """An idle interpreter exits; one that runs a process is left to it."""
        self.zygote.close()
        if self.zygote.popen.poll() is None and self.running.started == 0.0:
            self.zygote.popen.wait(30)


def warm_slots(specs: Sequence[ProcessSpec], start_env: Mapping[str, str], cwd: Path) -> List[WarmSlot]:
    """One warm interpreter per process of `specs`, started at once (not yet ready)."""
    return [WarmSlot(spec, start_env, cwd) for spec in specs]


def start_cold(specs: Sequence[ProcessSpec], cwd: Path) -> List[Running]:
    """Each process a new interpreter, all started at once."""
    started = []
    for spec in specs:
        popen = subprocess.Popen([sys.executable, *spec.argv], env=dict(spec.env), cwd=str(cwd),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        run = Running(spec.name, popen, time.monotonic())
        run.follow()
        started.append(run)
    return started


def start_warm(slots: Sequence[WarmSlot], specs: Sequence[ProcessSpec], cwd: Path) -> List[Running]:
    """Hand each ready warm interpreter its process (same names and order as `specs`)."""
    started = []
    for slot, spec in zip(slots, specs):
        assert slot.name == spec.name, (slot.name, spec.name)
        t0 = time.monotonic()
        slot.running.cpu_at_start = cpu_seconds(slot.zygote.pid)
        slot.zygote.hand(list(spec.argv), dict(spec.env), cwd=str(cwd), timeout=60)
        slot.running.started = t0
        started.append(slot.running)
    return started


def wait_all(procs: Sequence[Running], timeout: float) -> List[int]:
    """Exit codes of every process; kills the rest and raises with their output when one fails or hangs."""
    deadline = time.monotonic() + timeout
    codes: Dict[str, int] = {}
    try:
        while len(codes) < len(procs):
            for p in procs:
                code = p.popen.poll()
                if code is not None and p.name not in codes:
                    codes[p.name] = code
                    if code != 0:
                        raise RuntimeError(f"{p.name} exited {code}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s")
            time.sleep(0.05)
    except RuntimeError as exc:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
        time.sleep(0.2)
        logs = "\n".join(f"== {p.name}\n{p.text()[-3000:]}" for p in procs)
        raise RuntimeError(f"attempt failed: {exc}\n{logs}") from None
    return [codes[p.name] for p in procs]


def first_step(procs: Sequence[Running]) -> float:
    """Seconds from the attempt's start to the last worker's first training step line."""
    start = min(p.started for p in procs)
    return max(p.first(FIRST_STEP, p.started) for p in procs if p.name != "scheduler") - start
