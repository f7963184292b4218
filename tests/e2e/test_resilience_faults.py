"""Fault handling of the real launcher on real processes, with the stand-in workload (tests/harness).

Each host's `python` is the stand-in's wrapper: `-m refinenet.train` and `-m refinenet.scheduler` run
the stand-in, which prints the workload's log lines (one step every STANDIN_STEP_S seconds for
STANDIN_STEPS steps); everything else (host checks, manifest scans) runs the real interpreter. What is
proved here does not need MindSpore: hang detection, restart exhaustion with its root-cause report, that
two jobs on the same hosts leave each other alone, stop by signal, and no orphans after the launcher is
SIGKILLed (on the local host and on an SSH host). The kill -9 / resume / corrupt checkpoint scenarios
with the real training workload are in test_resilience.py.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness.cli import cli
from tests.harness.clusters import two_rank_cluster
from tests.harness.launched import LaunchedJob
from tests.harness.procs import alive, gone_within, tagged
from tests.harness.standin import steps_env

pytestmark = pytest.mark.e2e


def faults_cluster(folder: Path, python: str, *, steps: int, step_s: float, max_restarts: int = 1,
                   hang_timeout_s=None, remote=None, **settings) -> Path:
    """Two stand-in ranks (the second on `remote` when given) with the restart and hang settings."""
    return two_rank_cluster(folder, python, steps_env(step_s, steps, **settings), remote=remote,
                            restart={"max_restarts": max_restarts}, health={"hang_timeout_s": hang_timeout_s})


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


def test_a_stopped_rank_is_a_hang_detected_torn_down_and_restarted(tmp_path, runs, standin_python, child_env):
    cluster = faults_cluster(tmp_path / "c", standin_python, steps=12, step_s=0.25, hang_timeout_s=2)
    job = LaunchedJob(cluster, runs, "hang", child_env)
    try:
        procs = job.running_ranks(1, 2)
        os.kill(procs["r1"]["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert job.wait() == 0, job.stderr
    finally:
        job.kill()
    record = job.record()
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"]
    failure = record["attempts"][0]["failure"]
    assert failure["rank"] == 1 and "no progress for" in failure["reason"]
    assert "hang timeout 2 s" in failure["reason"]
    assert failure["time"] - record["attempts"][0]["started"] < 30
    assert not alive(procs["r1"]["pid"]) and time.monotonic() - stopped_at < 60
    assert "attempt 1 failed: rank 1 on local: no progress" in job.stderr
    assert tagged("hang") == []


def test_restarts_exhausted_exit_1_with_the_root_cause(tmp_path, runs, standin_python, child_env):
    cluster = faults_cluster(tmp_path / "c", standin_python, steps=5, step_s=0.1, max_restarts=1,
                             fail_rank=1, fail_code=3)
    job = LaunchedJob(cluster, runs, "doomed", child_env, "--max-restarts", "2")
    assert job.wait() == 1, job.stderr
    err = job.stderr
    assert "job doomed FAILED after 3 attempt(s) (restart limit reached (2 of 2 used))" in err
    assert "root cause (attempt 1 at " in err and "): rank 1 on local: exit code 3" in err
    assert "last lines of its log:\n" in err
    assert "  | Traceback (most recent call last): rank 1 gives up" in err
    assert "attempt 3: rank 1 on local: exit code 3" in err
    assert err.count("restart ") >= 2 and "in 1 s" in err
    record = job.record()
    assert record["state"] == "FAILED" and len(record["attempts"]) == 3
    assert {a["failure"]["exit_code"] for a in record["attempts"]} == {3}
    status = cli("status", "doomed", "--runs-dir", runs, env=child_env)
    assert status.returncode == 1 and "3 attempt(s)" in status.stdout
    assert status.stdout.count("rank 1 on local: exit code 3") == 3
    logs = cli("logs", "doomed", "--attempt", "2", "--runs-dir", runs, env=child_env)
    assert logs.returncode == 0 and "=== attempt 2 started" in logs.stdout
    assert "=== attempt 1 started" not in logs.stdout and "rank 1 gives up" in logs.stdout
    assert tagged("doomed") == []


def test_two_jobs_on_the_same_hosts_leave_each_other_alone(tmp_path, runs, standin_python, child_env):
    long = faults_cluster(tmp_path / "long", standin_python, steps=60, step_s=0.25, max_restarts=0)
    short = faults_cluster(tmp_path / "short", standin_python, steps=400, step_s=0.25, max_restarts=0)
    keeper = LaunchedJob(long, runs, "keeper", child_env)
    victims = []
    try:
        kept = keeper.running_ranks(1, 2)
        for name, end in (("failing", "kill -9"), ("stopped", "stop")):
            job = LaunchedJob(short, runs, name, child_env)
            victims.append(job)
            procs = job.running_ranks(1, 2)
            if end == "kill -9":
                os.kill(procs["r0"]["pid"], signal.SIGKILL)
            else:
                stop = cli("stop", name, "--runs-dir", runs, env=child_env)
                assert stop.returncode == 0, stop.stdout + stop.stderr
            assert job.wait() == 1, job.stderr
            assert job.record()["state"] == ("FAILED" if end == "kill -9" else "STOPPED")
            assert gone_within(name, 5) == []
            assert all(alive(p["pid"]) for p in kept.values()), f"{end} of job {name} touched job keeper"
        assert keeper.proc.poll() is None
        assert keeper.wait() == 0, keeper.stderr
    finally:
        for job in [keeper, *victims]:
            job.kill()
    record = keeper.record()
    assert record["state"] == "SUCCEEDED" and len(record["attempts"]) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_the_job_cleanly(tmp_path, runs, standin_python, child_env, sig):
    cluster = faults_cluster(tmp_path / "c", standin_python, steps=400, step_s=0.25)
    job_id = f"signal-{sig.name.lower()}"
    job = LaunchedJob(cluster, runs, job_id, child_env)
    try:
        job.running_ranks(1, 2)
        job.kill(sig)
        assert job.wait(30) == 1, job.stderr
    finally:
        job.kill()
    assert tagged(job_id) == []
    record = job.record()
    assert record["state"] == "STOPPED" and [a["state"] for a in record["attempts"]] == ["STOPPED"]
    assert all(p["state"] == "STOPPED" for p in record["attempts"][0]["processes"])
    assert f"{sig.name} received: stopping the job on every host" in job.stderr


def test_a_sigkilled_launcher_leaves_no_rank_on_any_host(tmp_path, runs, standin_python, child_env,
                                                         ssh_hosts):
    cluster = faults_cluster(tmp_path / "c", standin_python, steps=400, step_s=0.25, remote=ssh_hosts[0])
    job = LaunchedJob(cluster, runs, "orphans", child_env)
    try:
        procs = job.running_ranks(1, 2)
        assert {p["host"] for p in procs.values()} == {"local", ssh_hosts[0].name}
        assert len(tagged("orphans")) >= 3
        job.kill(signal.SIGKILL)
        killed = time.monotonic()
        left = gone_within("orphans", 5)
        assert left == [], f"still alive {time.monotonic() - killed:.1f} s after the launcher died: {left}"
    finally:
        job.kill()


def test_a_lost_ssh_connection_fails_the_attempt_and_the_job_restarts(tmp_path, runs, standin_python,
                                                                       child_env, ssh_servers):
    import psutil

    server = ssh_servers[1]
    cluster = faults_cluster(tmp_path / "c", standin_python, steps=16, step_s=0.25, remote=server.host())
    job = LaunchedJob(cluster, runs, "lost", child_env)
    try:
        procs = job.running_ranks(1, 2)
        remote_rank = procs["r1"]["pid"]
        sessions = psutil.Process(server.proc.pid).children()
        assert sessions, "no SSH session to cut"
        for session in sessions:
            session.kill()
        assert job.wait() == 0, job.stderr
    finally:
        job.kill()
    record = job.record()
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"], job.stderr
    failure = record["attempts"][0]["failure"]
    assert failure["host"] == server.name and f"lost the connection to {server.name}" in failure["reason"]
    assert not alive(remote_rank)
    assert tagged("lost") == []
