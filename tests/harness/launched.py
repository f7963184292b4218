"""A launched job: `refinenet-launch` as a child process, observed from outside only.

What a user could see: the launcher's stderr lines with their arrival times, its exit code,
`runs/<job>/job.json`, and `runs/<job>/logs/job.log` read as it grows (per attempt: when each rank's
first step line was seen, and every step number seen).
"""
from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import yaml

from tests.harness.cli import launcher_argv
from tests.harness.environment import child_env
from tests.harness.procs import alive, kill_tagged
from tests.harness.standin import STEP

T = TypeVar("T")

_JOB_LINE = re.compile(r"\[r(\d+) [^\]]*\] (.*)")


class LaunchedJob:
    """`refinenet-launch --cluster FILE --stage STAGE --runs-dir RUNS --job-id ID EXTRA...` started in
    the cluster file's folder (its own session, stdin empty). `stage=None` leaves `--stage` out (for
    `-- COMMAND` in `extra`); `wrap` runs the launcher under another command (e.g. `salloc -N2`, or
    `setpriv` as another user), with `python` (default: this interpreter)."""

    def __init__(self, cluster: Path, runs: Path, job_id: str, env: Mapping[str, str], *extra: str,
                 stage: Optional[str] = "r1", wrap: Sequence[str] = (), stdout=subprocess.DEVNULL,
                 python: str = sys.executable):
        self.job_id, self.runs, self.job_dir = job_id, Path(runs), Path(runs) / job_id
        self.started, self.started_wall = time.monotonic(), time.time()
        self.stderr_lines: List[Tuple[float, str]] = []
        argv = launcher_argv("--cluster", cluster, *(("--stage", stage) if stage else ()), "--runs-dir", runs,
                             "--job-id", job_id, *extra, python=python)
        self.proc = subprocess.Popen([*wrap, *argv], env=child_env(env), cwd=str(Path(cluster).parent),
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                                     start_new_session=True)
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

    def log(self, name: str = "job.log") -> str:
        """A log of the job (`job.log`, `rank_1.log`, ...) as it is now, empty when not written yet."""
        path = self.job_dir / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

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
            step = STEP.match(m.group(2))
            if step:
                rank = int(m.group(1))
                self.first_step.setdefault(self.attempt, {}).setdefault(rank, now)
                self.steps.setdefault(self.attempt, {}).setdefault(rank, []).append(int(step.group(1)))

    def wait_for(self, what: str, check: Callable[[], T], timeout: float = 120, interval: float = 0.1) -> T:
        """Poll `check` until it returns something true, and return that; fails naming `what` when the
        launcher ends first or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"launcher ended ({self.proc.returncode}) before {what}:\n{self.stderr}")
            time.sleep(interval)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.stderr[-4000:]}")

    def ranks_up(self, count: int, attempt: int = 1, timeout: float = 120) -> float:
        """Wait until ranks 0..count-1 have each printed a step line in `attempt`; seconds from the
        launcher's start to the first step line of the last of them."""
        def up() -> bool:
            self.follow()
            seen = self.first_step.get(attempt, {})
            return all(r in seen for r in range(count))

        try:
            self.wait_for(f"a step line of ranks 0..{count - 1} in attempt {attempt}", up, timeout, 0.05)
        except AssertionError:
            missing = [r for r in range(count) if r not in self.first_step.get(attempt, {})]
            raise AssertionError(f"attempt {attempt}: ranks {missing[:20]} printed no step line "
                                 f"(launcher {self.proc.poll()}):\n{self.stderr}") from None
        seen = self.first_step[attempt]
        return max(seen[r] for r in range(count)) - self.started

    def running_ranks(self, attempt: int, count: int, timeout: float = 60) -> Dict[str, dict]:
        """The processes (job.json) of `attempt` once ranks 0..count-1 have each printed a step line."""
        self.ranks_up(count, attempt, timeout)

        def recorded() -> Optional[Dict[str, dict]]:
            with contextlib.suppress(OSError, ValueError):
                attempts = self.record()["attempts"]
                if len(attempts) == attempt:
                    procs = {p["name"]: p for p in attempts[-1]["processes"]}
                    if all(f"r{r}" in procs for r in range(count)):
                        return procs
            return None

        return self.wait_for(f"the {count} ranks of attempt {attempt} in job.json", recorded, timeout)

    def step_gaps(self, attempt: int) -> int:
        """Step lines missing in `attempt`: per rank, numbers skipped between its first and last seen."""
        return sum(max(s) - min(s) + 1 - len(set(s)) for s in self.steps.get(attempt, {}).values())

    def wait(self, timeout: float = 120) -> int:
        """The launcher's exit code; SIGKILLs it and fails when it runs longer than `timeout` s."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            raise AssertionError(f"launcher still running after {timeout} s:\n{self.stderr}") from None
        self._reader.join(5)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the launcher if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        """SIGKILL the launcher if it still runs, and SIGKILL whatever the job left (its tag)."""
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        kill_tagged(self.job_id)


def command_cluster(folder: Path, host: dict, python: str, ranks: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Path(host["workdir"]).mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": "login", "backend": "dynamic", "device": "cpu",
        "hosts": [{**host, "ranks": ranks, "python": python}],
        "restart": {"max_restarts": 0}, "health": {"check_devices": False, "min_free_disk_gb": 0.1},
        "timeouts": {"cluster_s": 60, "heartbeat_s": 10, "stop_grace_s": 2}}))
    return path


def launch_command(cluster: Path, runs: Path, job_id: str, env: dict, *command: str) -> subprocess.Popen:
    err = open(runs.parent / f"{job_id}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "--cluster", str(cluster), "--runs-dir",
                             str(runs), "--job-id", job_id, "--", *command], env=env, cwd=str(cluster.parent),
                            stdout=subprocess.DEVNULL, stderr=err)


def record_rank_pids(runs: Path, job_id: str, count: int, proc: subprocess.Popen,
                     timeout: float = 90) -> list:
    """Pids of ranks r0..r(count-1) of the job's first attempt, once all of them run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (runs.parent / f"{job_id}.err").read_text()
        try:
            record = json.loads((runs / job_id / "job.json").read_text())
            procs = {p["name"]: p for p in record["attempts"][0]["processes"]}
            pids = [procs[f"r{r}"]["pid"] for r in range(count)]
            if all(alive(pid) for pid in pids):
                return pids
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.1)
    raise AssertionError((runs.parent / f"{job_id}.err").read_text())
