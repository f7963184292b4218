"""A light stand-in for the training workload behind each simulated host's `python`, for scale tests.

`install(folder)` writes `folder/standin_workload.py` (stdlib only) and `folder/python`, the wrapper
of tests/e2e/test_resilience_faults.py: `python -m refinenet.train ...` and `python -m
refinenet.scheduler ...` run the stand-in, anything else (the launcher's `python -S -c ...` guard
and host checks, `python -m refinenet.manifest scan`) runs the real interpreter. Use the wrapper as
every host's `python`.

What a rank does is set through the job's environment (`env` of the cluster file):

    STANDIN_MODE    steps (default): `epoch: 1 step: N, loss is X` every STANDIN_STEP_S seconds,
                    STANDIN_STEPS times (0: until killed), with a metrics record per step;
                    flood: numbered, checksummed lines as fast as it can for STANDIN_FLOOD_S seconds
                    or STANDIN_FLOOD_LINES lines (0: no limit), whichever comes first (see
                    `check_flood_lines`), then `standin done r<rank> lines=<count>`.
    STANDIN_FAIL_RANK / STANDIN_FAIL_CODE   that rank exits with that code after its first step.

The names of test_resilience_faults.py (FAKE_STEPS, FAKE_STEP_S, FAKE_FAIL_RANK, FAKE_FAIL_CODE)
are read when the STANDIN_ ones are absent. A rank's id is MS_NODE_ID (dynamic backend), else
RANK_ID, else OMPI_COMM_WORLD_RANK; processes it starts carry REFINENET_JOB_ID like any rank.

For scale tests and benchmarks it also has the rest of the harness: `cluster_file` (a dynamic
CPU cluster over simulated SSH hosts), `LaunchedJob` (`refinenet-launch` as a child, watched only
from outside: stderr with arrival times, job.json, job.log as it grows), and /proc helpers that
find a job's processes by their REFINENET_JOB_ID tag (`tagged`, `snapshot`, `rank_pids`,
`gone_after`, `kill_tagged`). Benchmarks import it after putting the repository root on sys.path.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import yaml

from tests.e2e.test_resilience_faults import WRAPPER, gone_within, tagged

__all__ = ["PROGRAM", "install", "step_env", "flood_env", "flood_line", "step_numbers", "FloodCheck",
           "check_flood_lines", "cluster_file", "launcher_command", "LaunchedJob", "identity", "still_alive",
           "snapshot", "rank_pids", "gone_after", "kill_tagged", "tagged", "gone_within"]

PROGRAM = r'''
import json, os, random, sys, time, zlib

def setting(name, default):
    return os.environ.get("STANDIN_" + name, os.environ.get("FAKE_" + name, default))

def rank_id():
    for name in ("MS_NODE_ID", "RANK_ID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0

def output_dir(argv):
    for i, arg in enumerate(argv):
        if arg == "--output-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output-dir="):
            return arg.split("=", 1)[1]
    return "."

def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]

def flood(rank, seconds, limit):
    rng = random.Random(rank)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    seq, chunk, size = 0, [], 0
    end = time.monotonic() + seconds
    while True:
        payload = alphabet * (1 + rng.randrange(2))
        payload = payload[:rng.randrange(1, len(payload) + 1)]
        body = f"standin r{rank} #{seq} {payload}"
        line = f"{body} len={len(body)} crc={zlib.crc32(body.encode()):08x}\n".encode()
        chunk.append(line)
        size += len(line)
        seq += 1
        if size >= (1 << rng.randrange(6, 17)) or seq == limit:
            write_all(b"".join(chunk))
            chunk, size = [], 0
            if seq == limit or time.monotonic() >= end:
                break
    write_all(f"standin done r{rank} lines={seq}\n".encode())

def steps(rank, argv):
    count = int(setting("STEPS", "0"))
    step_s = float(setting("STEP_S", "0.5"))
    fail_rank = int(setting("FAIL_RANK", "-1"))
    fail_code = int(setting("FAIL_CODE", "1"))
    print("training starts from random initialisation (stand-in)", flush=True)
    metrics = os.path.join(output_dir(argv), "metrics")
    os.makedirs(metrics, exist_ok=True)
    with open(os.path.join(metrics, f"rank_{rank}.jsonl"), "a") as m:
        step, next_at = 0, time.monotonic()
        while count <= 0 or step < count:
            step += 1
            next_at += step_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            print(f"epoch: 1 step: {step}, loss is {1.0 / step:.4f}", flush=True)
            m.write(json.dumps({"step": step, "epoch": 1, "loss": 1.0 / step, "time": time.time()}) + "\n")
            m.flush()
            if rank == fail_rank:
                print(f"Traceback (most recent call last): rank {rank} gives up", flush=True)
                sys.exit(fail_code)
    print("Train epoch time: 1.0 ms, per step time: 1.0 ms", flush=True)

def main():
    role = sys.argv[1]
    if role == "scheduler":
        print("scheduler up", flush=True)
        while True:
            time.sleep(60)
    rank = rank_id()
    if setting("MODE", "steps") == "flood":
        flood(rank, float(setting("FLOOD_S", "3")), int(setting("FLOOD_LINES", "0")))
    else:
        steps(rank, sys.argv[2:])

main()
'''


def install(folder: Path, interpreter: str = sys.executable) -> str:
    """Write the stand-in and its `python` wrapper into `folder`; the wrapper's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "standin_workload.py"
    program.write_text(PROGRAM)
    wrapper = folder / "python"
    wrapper.write_text(WRAPPER.format(py=interpreter, fake=program))
    wrapper.chmod(0o755)
    return str(wrapper)


def step_env(step_s: float, steps: int = 0, **extra: str) -> Dict[str, str]:
    """Job environment for step mode: a step line every `step_s` s, `steps` times (0: until killed)."""
    return {"STANDIN_MODE": "steps", "STANDIN_STEP_S": str(step_s), "STANDIN_STEPS": str(steps), **extra}


def flood_env(seconds: float, max_lines: int = 0) -> Dict[str, str]:
    """Job environment for flood mode: checksummed lines as fast as possible for `seconds`, at most
    `max_lines` of them per rank (0: no limit)."""
    return {"STANDIN_MODE": "flood", "STANDIN_FLOOD_S": str(seconds), "STANDIN_FLOOD_LINES": str(max_lines)}


_STEP = re.compile(r"epoch: \d+ step: (\d+), loss is ")
_FLOOD = re.compile(r"standin r(\d+) #(\d+) (\S+) len=(\d+) crc=([0-9a-f]{8})")
_DONE = re.compile(r"standin done r(\d+) lines=(\d+)")


def flood_line(rank: int, seq: int, payload: str) -> str:
    """One flood line as the stand-in prints it (without the newline)."""
    body = f"standin r{rank} #{seq} {payload}"
    return f"{body} len={len(body)} crc={zlib.crc32(body.encode()):08x}"


def step_numbers(lines: Iterable[str]) -> List[int]:
    """The step numbers of the `epoch: 1 step: N, loss is X` lines among `lines`."""
    return [int(m.group(1)) for m in map(_STEP.search, lines) if m]


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


def cluster_file(folder: Path, hosts: Sequence, ranks: Union[int, Sequence[int]], python: str,
                 env: Mapping[str, str], *, name: str = "scale", max_restarts: int = 0,
                 hang_timeout_s: Optional[float] = None, stop_grace_s: float = 3,
                 extra: Optional[Mapping[str, object]] = None) -> Path:
    """A dynamic CPU cluster file over simulated SSH hosts (`SshHost`s), `ranks` per host, every host's
    `python` the stand-in wrapper; `extra` adds or replaces top-level sections (e.g. `launch`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = [ranks] * len(hosts) if isinstance(ranks, int) else list(ranks)
    for h in hosts:
        Path(h.workdir).mkdir(parents=True, exist_ok=True)
        (Path(h.workdir) / "train.lst").write_text("stand-in\n")
    data = {"name": name, "backend": "dynamic", "device": "cpu",
            "hosts": [{**h.spec_dict(), "ranks": n, "python": python} for h, n in zip(hosts, counts)],
            "env": dict(env),
            "job": {"data": "train.lst", "output_dir": "out"},
            "restart": {"max_restarts": max_restarts, "backoff_s": 1, "backoff_max_s": 1},
            "health": {"interval_s": 5, "hang_timeout_s": hang_timeout_s, "check_devices": False,
                       "min_free_disk_gb": 0.1},
            "timeouts": {"cluster_s": 120, "heartbeat_s": 30, "stop_grace_s": stop_grace_s},
            **(extra or {})}
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def launcher_command() -> List[str]:
    """`refinenet-launch` of this interpreter's environment (the console script when installed)."""
    script = Path(sys.executable).parent / "refinenet-launch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


_JOB_LINE = re.compile(r"\[r(\d+) [^\]]*\] (.*)")


class LaunchedJob:
    """`refinenet-launch --cluster FILE --stage r1` as a child process, observed from outside only:
    its stderr lines with their arrival times, `runs/<job>/job.json`, and `logs/job.log` read as it
    grows (per attempt: when each rank's first step line was seen, and every step number seen)."""

    def __init__(self, cluster: Path, runs: Path, job_id: str, env: Mapping[str, str], *extra: str,
                 stdout=subprocess.DEVNULL):
        self.job_id, self.runs, self.job_dir = job_id, Path(runs), Path(runs) / job_id
        self.started, self.started_wall = time.monotonic(), time.time()
        self.stderr_lines: List[Tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [*launcher_command(), "--cluster", str(cluster), "--stage", "r1", "--runs-dir", str(runs),
             "--job-id", job_id, *extra], env=dict(env), cwd=str(Path(cluster).parent), stdout=stdout,
            stderr=subprocess.PIPE, start_new_session=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._offset, self._partial, self.attempt = 0, b"", 0
        self.first_step: Dict[int, Dict[int, float]] = {}
        self.steps: Dict[int, Dict[int, List[int]]] = {}
        self.lines = 0

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            self.stderr_lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.stderr_lines)

    def stderr_time(self, text: str) -> Optional[float]:
        """Seconds from the start to the first stderr line containing `text`, None if none did."""
        return next((t - self.started for t, line in self.stderr_lines if text in line), None)

    def record(self) -> dict:
        return json.loads((self.job_dir / "job.json").read_text())

    def follow(self) -> None:
        """Read what job.log gained since the last call."""
        try:
            with open(self.job_dir / "logs" / "job.log", "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        now = time.monotonic()
        self._offset += len(data)
        *whole, self._partial = (self._partial + data).split(b"\n")
        for raw in whole:
            line = raw.decode(errors="replace")
            if line.startswith("=== attempt "):
                self.attempt = int(line.split()[2])
                continue
            m = _JOB_LINE.match(line)
            if not m:
                continue
            self.lines += 1
            step = _STEP.match(m.group(2))
            if step:
                rank = int(m.group(1))
                self.first_step.setdefault(self.attempt, {}).setdefault(rank, now)
                self.steps.setdefault(self.attempt, {}).setdefault(rank, []).append(int(step.group(1)))

    def ranks_up(self, count: int, attempt: int = 1, timeout: float = 120) -> float:
        """Wait until ranks 0..count-1 have each printed a step line in `attempt`; seconds from the
        launcher's start to the first step line of the last of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.follow()
            seen = self.first_step.get(attempt, {})
            if all(r in seen for r in range(count)):
                return max(seen[r] for r in range(count)) - self.started
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher ended ({self.proc.returncode}) with {len(seen)} of {count} "
                                     f"ranks up in attempt {attempt}:\n{self.stderr}")
            time.sleep(0.05)
        missing = [r for r in range(count) if r not in self.first_step.get(attempt, {})]
        raise AssertionError(f"attempt {attempt}: ranks {missing[:20]} printed no step line within "
                             f"{timeout} s:\n{self.stderr}")

    def step_gaps(self, attempt: int) -> int:
        """Step lines missing in `attempt`: per rank, numbers skipped between its first and last seen."""
        return sum(max(s) - min(s) + 1 - len(set(s)) for s in self.steps.get(attempt, {}).values())

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            raise AssertionError(f"launcher still running after {timeout} s:\n{self.stderr}") from None
        self._reader.join(5)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        """SIGKILL the launcher if it still runs, and SIGKILL whatever the job left (its tag)."""
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        kill_tagged(self.job_id)


def identity(pid: int) -> Optional[Tuple[int, int]]:
    """(pid, start time in clock ticks) of a live, non-zombie process: tells a pid reused later apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else (pid, int(fields[19]))


def still_alive(procs: Iterable[Tuple[int, int]]) -> List[int]:
    return [pid for pid, start in procs if identity(pid) == (pid, start)]


def snapshot(job_id: str) -> Set[Tuple[int, int]]:
    """Identities of the job's live processes (every host: the simulated hosts share this kernel)."""
    return {i for i in map(identity, tagged(job_id)) if i}


def rank_pids(job_id: str) -> Dict[int, int]:
    """{rank: pid} of the job's live stand-in ranks, found by their tag, MS_NODE_ID and command line."""
    found = {}
    for pid in tagged(job_id):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        is_rank = any(a.endswith(b"standin_workload.py") for a in argv) and b"rank" in argv
        if is_rank and env.get(b"MS_NODE_ID", b"").isdigit():
            found[int(env[b"MS_NODE_ID"])] = pid
    return found


def gone_after(procs: Iterable[Tuple[int, int]], since: float,
               timeout: float) -> Tuple[Optional[float], List[int]]:
    """Wait until none of `procs` lives: (seconds from `since` (monotonic) until then, or None on timeout;
    the pids still alive)."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = still_alive(procs)
        if not left:
            return time.monotonic() - since, []
        if time.monotonic() > deadline:
            return None, left
        time.sleep(0.02)


def kill_tagged(job_id: str) -> int:
    """SIGKILL every live process carrying the job's tag; how many there were."""
    pids = tagged(job_id)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
