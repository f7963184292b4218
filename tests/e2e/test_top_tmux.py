"""`refinenet-launch top` in a real terminal (tmux) against a running 2-rank stand-in job."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.cli import cli, launcher_argv
from tests.harness.clusters import two_rank_cluster
from tests.harness.environment import REPO
from tests.harness.launched import LaunchedJob
from tests.harness.procs import gone_within
from tests.harness.standin import steps_env

pytestmark = pytest.mark.e2e


def standin_job(folder: Path, python: str, env: dict, job_id: str, *, steps: int,
                step_s: float) -> LaunchedJob:
    """Two stand-in ranks stepping every `step_s` s, `steps` times."""
    cluster = two_rank_cluster(folder / "c", python, steps_env(step_s, steps), restart={"max_restarts": 1})
    return LaunchedJob(cluster, folder / "runs", job_id, env)


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is not installed (make setup installs it)"
    return subprocess.run([tmux, "-L", socket, *args], capture_output=True, text=True, timeout=30)


def _rows(screen: str) -> dict:
    """Rank -> (state, step) from the table `top` draws."""
    found = {}
    for line in screen.splitlines():
        m = re.match(r"^r(\d+)\*?\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s", line)
        if m:
            found[int(m.group(1))] = (m.group(2), m.group(4))
    return found


def _wait_for(socket: str, check, timeout: float = 30.0) -> str:
    deadline, screen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        screen = _tmux(socket, "capture-pane", "-p", "-t", "top").stdout
        if check(screen):
            return screen
        time.sleep(0.25)
    raise AssertionError(f"the screen never showed what was expected:\n{screen}")


def test_top_shows_every_rank_updating_and_q_quits(tmp_path, standin_python, child_env):
    runs = tmp_path / "runs"
    job = standin_job(tmp_path, standin_python, child_env, "watched", steps=200, step_s=0.2)
    socket = f"top-test-{id(tmp_path)}"
    try:
        job.running_ranks(1, 2)
        env = " ".join(f"{k}={shlex.quote(child_env[k])}" for k in ("PYTHONPATH", "PATH"))
        top = launcher_argv("top", "watched", "--runs-dir", runs, "--interval", "0.3")
        command = f"env {env} TERM=xterm-256color {shlex.join(top)}"
        made = _tmux(socket, "new-session", "-d", "-s", "top", "-x", "200", "-y", "40", "-c", str(REPO),
                     command)
        assert made.returncode == 0, made.stderr
        first = _wait_for(socket, lambda s: {0, 1} <= set(_rows(s)) and all(
            step != "-" for _, step in _rows(s).values()))
        assert "job watched" in first and "attempt 1" in first and "ETA" in first
        assert all(state == "RUNNING" for state, _ in _rows(first).values()), first
        before = {r: int(step) for r, (_, step) in _rows(first).items()}
        later = _wait_for(socket, lambda s: {0, 1} <= set(_rows(s)) and all(
            _rows(s)[r][1] != "-" and int(_rows(s)[r][1]) > before[r] for r in (0, 1)))
        assert "q: quit" in later
        _tmux(socket, "send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _tmux(socket, "has-session", "-t", "top").returncode == 0:
            time.sleep(0.1)
        assert _tmux(socket, "has-session", "-t", "top").returncode != 0, "top did not quit on q"
        assert job.proc.poll() is None
    finally:
        _tmux(socket, "kill-server")
        cli("stop", "watched", "--runs-dir", runs, env=child_env)
        try:
            job.wait(30)
        finally:
            job.kill()
    assert gone_within("watched", 10) == []


def test_top_off_a_terminal_prints_lines_and_stops(tmp_path, standin_python, child_env):
    runs = tmp_path / "runs"
    job = standin_job(tmp_path, standin_python, child_env, "short", steps=10, step_s=0.1)
    try:
        job.running_ranks(1, 2)
        out = cli("top", "short", "--runs-dir", runs, "--interval", "0.2", env=child_env, timeout=90)
        assert out.returncode == 0, out.stderr
        assert job.wait(60) == 0
    finally:
        job.kill()
    assert "\x1b[" not in out.stdout and out.stdout.count("job short") >= 1
    final = out.stdout.rsplit("job short", 1)[1]
    assert final.startswith("  SUCCEEDED")
    last = _rows(final)
    assert set(last) == {0, 1} and last[0][1] == "10" and last[1][1] == "10"
    limited = cli("top", "short", "--runs-dir", runs, "--iterations", "1", env=child_env)
    assert limited.returncode == 0 and limited.stdout.count("job short") == 1
