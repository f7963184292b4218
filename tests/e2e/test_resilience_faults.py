"""Fault handling of the real launcher on real processes, with a small stand-in workload.

Each host's `python` is a wrapper script: `-m refinenet.train` and `-m refinenet.scheduler` run a
stand-in that prints the workload's log lines (one step every FAKE_STEP_S seconds for FAKE_STEPS
steps); everything else (host checks, manifest scans) runs the real interpreter. What is proved
here does not need MindSpore: hang detection, restart exhaustion with its root-cause report, that
two jobs on the same hosts leave each other alone, stop by signal, and no orphans after the
launcher is SIGKILLed (on the local host and on an SSH host). The kill -9 / resume / corrupt
checkpoint scenarios with the real training workload are in test_resilience.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

FAKE = textwrap.dedent('''
    import argparse, json, os, sys, time
    role = sys.argv[1]
    if role == "scheduler":
        print("scheduler up", flush=True)
        while True:
            time.sleep(60)
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", default="none")
    args, _ = p.parse_known_args(sys.argv[2:])
    rank = int(os.environ["MS_NODE_ID"])
    steps, step_s = int(os.environ["FAKE_STEPS"]), float(os.environ["FAKE_STEP_S"])
    fail_rank = int(os.environ.get("FAKE_FAIL_RANK", "-1"))
    fail_code = int(os.environ.get("FAKE_FAIL_CODE", "0"))
    print(f"training starts from random initialisation (resume {args.resume})", flush=True)
    metrics = os.path.join(args.output_dir, "metrics")
    os.makedirs(metrics, exist_ok=True)
    with open(os.path.join(metrics, f"rank_{rank}.jsonl"), "a") as m:
        for step in range(1, steps + 1):
            time.sleep(step_s)
            print(f"epoch: 1 step: {step}, loss is {1.0 / step:.4f}", flush=True)
            m.write(json.dumps({"step": step, "epoch": 1, "loss": 1.0 / step, "time": time.time()}) + "\\n")
            m.flush()
            if rank == fail_rank:
                print(f"Traceback (most recent call last): rank {rank} gives up", flush=True)
                sys.exit(fail_code)
    print("Train epoch time: 1.0 ms, per step time: 1.0 ms", flush=True)
''')

WRAPPER = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "refinenet.train" ]; then shift 2; exec {py} {fake} rank "$@"; fi
if [ "$1" = "-m" ] && [ "$2" = "refinenet.scheduler" ]; then shift 2; exec {py} {fake} scheduler "$@"; fi
exec {py} "$@"
"""


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fake-workload")
    (root / "fake_workload.py").write_text(FAKE)
    wrapper = root / "python"
    wrapper.write_text(WRAPPER.format(py=sys.executable, fake=root / "fake_workload.py"))
    wrapper.chmod(0o755)
    return str(wrapper)


def cluster_file(folder: Path, python: str, *, steps: int, step_s: float, max_restarts: int = 1,
                 hang_timeout_s: Optional[float] = None, ssh_host=None, env: Optional[Dict[str, str]] = None
                 ) -> Path:
    """A dynamic CPU cluster: one local rank, and a second one locally or on `ssh_host`."""
    folder.mkdir(parents=True, exist_ok=True)
    local = {"name": "local", "ranks": 1 if ssh_host else 2, "python": python,
             "workdir": str(folder / "local")}
    hosts = [local]
    if ssh_host is not None:
        hosts.append({**ssh_host.spec_dict(), "ranks": 1, "python": python})
    for host in hosts:
        Path(host["workdir"]).mkdir(parents=True, exist_ok=True)
        (Path(host["workdir"]) / "train.lst").write_text("stand-in\n")
    data = {"name": "faults", "backend": "dynamic", "device": "cpu", "hosts": hosts,
            "env": {"FAKE_STEPS": str(steps), "FAKE_STEP_S": str(step_s), **(env or {})},
            "job": {"data": "train.lst", "output_dir": "out"},
            "restart": {"max_restarts": max_restarts, "backoff_s": 1, "backoff_max_s": 1},
            "health": {"interval_s": 5, "hang_timeout_s": hang_timeout_s, "check_devices": False,
                       "min_free_disk_gb": 0.1},
            "timeouts": {"cluster_s": 60, "heartbeat_s": 10, "stop_grace_s": 3}}
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Launch:
    """`refinenet-launch --cluster FILE --stage r1` as a child process, with its job directory."""

    def __init__(self, cluster: Path, runs: Path, job_id: str, env: dict, *extra: str):
        self.job_id, self.job_dir = job_id, runs / job_id
        self.err_path = runs.parent / f"{job_id}.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "--cluster", str(cluster), "--stage", "r1", "--runs-dir",
             str(runs), "--job-id", job_id, *extra], env=env, cwd=str(cluster.parent),
            stdout=subprocess.DEVNULL, stderr=open(self.err_path, "w"))

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def record(self) -> dict:
        return json.loads((self.job_dir / "job.json").read_text())

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"launcher still running after {timeout} s:\n{self.stderr}") from None

    def running_ranks(self, attempt: int, count: int, timeout: float = 60) -> Dict[str, dict]:
        """The processes of `attempt` once `count` ranks have printed a step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher ended early ({self.proc.returncode}):\n{self.stderr}")
            try:
                record = self.record()
            except (OSError, ValueError):
                record = {"attempts": []}
            if len(record["attempts"]) == attempt:
                procs = {p["name"]: p for p in record["attempts"][-1]["processes"]}
                log = self.job_dir / "logs" / "job.log"
                text = log.read_text() if log.exists() else ""
                stepped = [r for r in range(count) if f"[r{r} " in text and
                           text.rsplit(f"=== attempt {attempt} started", 1)[-1].count(f"[r{r} ") >= 2]
                if len(stepped) == count and all(f"r{r}" in procs for r in range(count)):
                    return procs
            time.sleep(0.1)
        raise AssertionError(f"attempt {attempt} did not get {count} ranks running:\n{self.stderr}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)


def tagged(job_id: str) -> List[int]:
    """Live processes (any host: the simulated hosts share this kernel) carrying the job's tag."""
    tag = f"REFINENET_JOB_ID={job_id}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if (env.startswith(tag) or b"\0" + tag in env) and state != b"Z":
            found.append(int(entry))
    return found


def gone_within(job_id: str, seconds: float) -> List[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = tagged(job_id)
        if not left:
            return []
        time.sleep(0.05)
    return tagged(job_id)


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


def test_a_stopped_rank_is_a_hang_detected_torn_down_and_restarted(tmp_path, runs, fake_python, child_env):
    cluster = cluster_file(tmp_path / "c", fake_python, steps=12, step_s=0.25, hang_timeout_s=2)
    job = Launch(cluster, runs, "hang", child_env)
    try:
        procs = job.running_ranks(1, 2)
        os.kill(procs["r1"]["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert job.wait() == 0, job.stderr
    finally:
        if job.proc.poll() is None:
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


def test_restarts_exhausted_exit_1_with_the_root_cause(tmp_path, runs, fake_python, child_env):
    cluster = cluster_file(tmp_path / "c", fake_python, steps=5, step_s=0.1, max_restarts=1,
                           env={"FAKE_FAIL_RANK": "1", "FAKE_FAIL_CODE": "3"})
    job = Launch(cluster, runs, "doomed", child_env, "--max-restarts", "2")
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
    status = cli(child_env, "status", "doomed", "--runs-dir", str(runs))
    assert status.returncode == 1 and "3 attempt(s)" in status.stdout
    assert status.stdout.count("rank 1 on local: exit code 3") == 3
    logs = cli(child_env, "logs", "doomed", "--attempt", "2", "--runs-dir", str(runs))
    assert logs.returncode == 0 and "=== attempt 2 started" in logs.stdout
    assert "=== attempt 1 started" not in logs.stdout and "rank 1 gives up" in logs.stdout
    assert tagged("doomed") == []


def test_two_jobs_on_the_same_hosts_leave_each_other_alone(tmp_path, runs, fake_python, child_env):
    long = cluster_file(tmp_path / "long", fake_python, steps=60, step_s=0.25, max_restarts=0)
    short = cluster_file(tmp_path / "short", fake_python, steps=400, step_s=0.25, max_restarts=0)
    keeper = Launch(long, runs, "keeper", child_env)
    victims = []
    try:
        kept = keeper.running_ranks(1, 2)
        for name, end in (("failing", "kill -9"), ("stopped", "stop")):
            job = Launch(short, runs, name, child_env)
            victims.append(job)
            procs = job.running_ranks(1, 2)
            if end == "kill -9":
                os.kill(procs["r0"]["pid"], signal.SIGKILL)
            else:
                stop = cli(child_env, "stop", name, "--runs-dir", str(runs))
                assert stop.returncode == 0, stop.stdout + stop.stderr
            assert job.wait() == 1, job.stderr
            assert job.record()["state"] == ("FAILED" if end == "kill -9" else "STOPPED")
            assert gone_within(name, 5) == []
            assert all(alive(p["pid"]) for p in kept.values()), f"{end} of job {name} touched job keeper"
        assert keeper.proc.poll() is None
        assert keeper.wait() == 0, keeper.stderr
    finally:
        for job in [keeper, *victims]:
            if job.proc.poll() is None:
                job.kill()
    record = keeper.record()
    assert record["state"] == "SUCCEEDED" and len(record["attempts"]) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_the_job_cleanly(tmp_path, runs, fake_python, child_env, sig):
    cluster = cluster_file(tmp_path / "c", fake_python, steps=400, step_s=0.25)
    job_id = f"signal-{sig.name.lower()}"
    job = Launch(cluster, runs, job_id, child_env)
    try:
        job.running_ranks(1, 2)
        job.kill(sig)
        assert job.wait(30) == 1, job.stderr
    finally:
        if job.proc.poll() is None:
            job.kill()
    assert tagged(job_id) == []
    record = job.record()
    assert record["state"] == "STOPPED" and [a["state"] for a in record["attempts"]] == ["STOPPED"]
    assert all(p["state"] == "STOPPED" for p in record["attempts"][0]["processes"])
    assert f"{sig.name} received: stopping the job on every host" in job.stderr


def test_a_sigkilled_launcher_leaves_no_rank_on_any_host(tmp_path, runs, fake_python, child_env, ssh_hosts):
    cluster = cluster_file(tmp_path / "c", fake_python, steps=400, step_s=0.25, ssh_host=ssh_hosts[0])
    job = Launch(cluster, runs, "orphans", child_env)
    try:
        procs = job.running_ranks(1, 2)
        assert {p["host"] for p in procs.values()} == {"local", ssh_hosts[0].name}
        assert len(tagged("orphans")) >= 3
        job.kill(signal.SIGKILL)
        killed = time.monotonic()
        left = gone_within("orphans", 5)
        assert left == [], f"still alive {time.monotonic() - killed:.1f} s after the launcher died: {left}"
    finally:
        if job.proc.poll() is None:
            job.kill()


def test_a_lost_ssh_connection_fails_the_attempt_and_the_job_restarts(tmp_path, runs, fake_python, child_env,
                                                                       ssh_servers):
    import psutil

    server = ssh_servers[1]
    cluster = cluster_file(tmp_path / "c", fake_python, steps=16, step_s=0.25, ssh_host=server.host())
    job = Launch(cluster, runs, "lost", child_env)
    try:
        procs = job.running_ranks(1, 2)
        remote_rank = procs["r1"]["pid"]
        sessions = psutil.Process(server.proc.pid).children()
        assert sessions, "no SSH session to cut"
        for session in sessions:
            session.kill()
        assert job.wait() == 0, job.stderr
    finally:
        if job.proc.poll() is None:
            job.kill()
    record = job.record()
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"], job.stderr
    failure = record["attempts"][0]["failure"]
    assert failure["host"] == server.name and f"lost the connection to {server.name}" in failure["reason"]
    assert not alive(remote_rank)
    assert tagged("lost") == []
