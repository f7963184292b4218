"""`refinenet-launch logs|status|list|stop` through the real CLI, on job directories with real processes."""
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.failures import Failure, FailureKind
from launcher.jobs import JOB_ID_ENV, JobDir, LauncherInfo, ProcessRecord
from launcher.logs.aggregator import LogAggregator
from launcher.states import JobState, RankState
from tests.harness.cli import cli, launcher_argv

pytestmark = pytest.mark.e2e

#: A cluster file's parsed data: two "hosts" that are both this machine (local transport).
SPEC = {
    "name": "twohost",
    "backend": "dynamic",
    "device": "cpu",
    "hosts": [{"name": "host-a", "ranks": 2}, {"name": "host-b", "ranks": 2}],
}


def dead_launcher() -> LauncherInfo:
    """A launcher that is gone: the pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return LauncherInfo(pid=proc.pid, host=socket.gethostname(), started=time.time() - 100)


def fabricate_job(runs: Path) -> JobDir:
    """A job that failed once (rank 1) and runs its second attempt, with real logs and metrics."""
    job = JobDir.create(runs, cluster="twohost", stage="r1", spec=SPEC, cluster_file="twohost.yaml",
                        plan={"backend": "dynamic", "ranks": 2}, launcher=dead_launcher())
    with job.open_logs() as agg:
        for attempt in (1, 2):
            job.begin_attempt(resume=None if attempt == 1 else "/out/r1/ckpt/refinenet-1_4.ckpt")
            agg.start_attempt(attempt)
            job.record_process(ProcessRecord("scheduler", "host-a", 4009 + 10 * attempt, 4009 + 10 * attempt))
            agg.process_sink("scheduler", "host-a")(f"scheduler of attempt {attempt}")
            for rank, host in ((0, "host-a"), (1, "host-b")):
                job.record_process(ProcessRecord.for_rank(rank, host, 4000 + 10 * attempt + rank,
                                                          4000 + 10 * attempt + rank, started=time.time()))
                sink = agg.rank_sink(rank, host)
                for step in range(1, 4):
                    sink(f"epoch: {attempt} step: {step}, loss is {1.0 / (step + rank + attempt):.4f}")
            if attempt == 1:
                agg.rank_sink(1, "host-b")("Traceback: rank 1 fell over")
                job.set_process_state("r1", RankState.FAILED, exit_code=1)
                failure = Failure(FailureKind.EXIT, "host-b", "exit code 1", rank=1, exit_code=1,
                                  log_tail=("Traceback: rank 1 fell over",))
                job.end_attempt(JobState.FAILED, failure,
                                job_state=JobState.RESTARTING)
        job.set_state(JobState.RUNNING)
    return job


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def env(child_env, runs):
    """Environment of CLI child processes: this test's runs directory."""
    return dict(child_env, REFINENET_RUNS_DIR=str(runs))


def test_status_list_and_logs_of_a_fabricated_job(runs, env):
    job = fabricate_job(runs)
    res = cli("status", job.job_id, env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    assert code == 0
    assert "state     RUNNING, 2 attempt(s)" in out
    assert "launcher  pid" in out and "(not running)" in out
    assert "1 FAILED" in out and "rank 1 on host-b: exit code 1" in out
    assert "2 RUNNING" in out and "resumed from /out/r1/ckpt/refinenet-1_4.ckpt" in out
    row0 = next(line for line in out.splitlines() if line.startswith("r0 "))
    assert "host-a" in row0 and "4020" in row0 and "RUNNING" in row0 and "loss is 0.2000" in row0
    row1 = next(line for line in out.splitlines() if line.startswith("r1 "))
    assert "host-b" in row1 and "loss is 0.1667" in row1
    assert any(line.startswith("scheduler ") and line.endswith("scheduler of attempt 2")
               for line in out.splitlines())
    assert "progress  rank 1: epoch 2, step 3, loss 0.1667 (" in out

    res = cli("status", job.job_id, "--json", env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    status = json.loads(out)
    assert status["state"] == "RUNNING"
    assert [p["name"] for p in status["processes"]] == ["r0", "r1", "scheduler"]
    assert status["metrics"]["0"]["epoch"] == 2

    res = cli("list", env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["JOB", "STATE", "STAGE", "STARTED", "ATTEMPTS", "RANKS", "CLUSTER"]
    assert row.split()[:3] == [job.job_id, "RUNNING", "r1"] and row.split()[-3:] == ["2", "2", "twohost"]

    res = cli("logs", job.job_id, env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 + 2 * (1 + 2 * 3) + 1
    assert lines[1] == "[scheduler host-a] scheduler of attempt 1"
    assert "[r1 host-b] Traceback: rank 1 fell over" in lines

    res = cli("logs", str(job.path), "--ranks", "1", "--attempt", "1", env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    lines = out.splitlines()
    assert lines[0].startswith("=== attempt 1 started")
    expected = [f"[r1 host-b] epoch: 1 step: {s}, loss is {1.0 / (s + 2):.4f}" for s in (1, 2, 3)]
    assert lines[1:] == expected + ["[r1 host-b] Traceback: rank 1 fell over"]


def test_bad_filters_and_unknown_jobs_exit_2(runs, env):
    job = fabricate_job(runs)
    for argv, needle in ((["logs", job.job_id, "--ranks", "5"], "no rank 5"),
                         (["logs", job.job_id, "--ranks", "x"], "--ranks"),
                         (["logs", job.job_id, "--attempt", "0"], "--attempt")):
        res = cli(*argv, env=env)
        code, _, err = res.returncode, res.stdout, res.stderr
        assert code == 2 and needle in err, err
    for sub in ("logs", "status", "stop"):
        res = cli(sub, "no-such-job", env=env)
        code, out, err = res.returncode, res.stdout, res.stderr
        assert code == 2 and "no job 'no-such-job'" in err and str(job.path) in err
    res = cli("list", "--runs-dir", str(runs.parent / "empty"), env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    assert code == 0 and "no jobs in" in out


def test_status_of_a_failed_job_exits_1(runs, env):
    job = fabricate_job(runs)
    job.end_attempt(JobState.FAILED, Failure(FailureKind.EXIT, "host-a", "exit code 1", rank=0, exit_code=1))
    res = cli("status", job.job_id, env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    assert code == 1 and "state     FAILED" in out


def test_logs_follow_until_the_job_ends(runs, env):
    job = JobDir.create(runs, cluster="c", stage="r1", spec=SPEC)
    job.begin_attempt()
    follower = subprocess.Popen(launcher_argv("logs", job.job_id, "--follow", "--ranks", "0"), env=env,
                                stdout=subprocess.PIPE, text=True)
    with LogAggregator(job.logs_dir) as agg:
        agg.start_attempt(1)
        sinks = [agg.rank_sink(r, "h") for r in range(2)]
        for i in range(2000):
            sinks[i % 2](f"line {i}")
            if i % 500 == 0:
                time.sleep(0.3)
    time.sleep(0.5)
    assert follower.poll() is None, "follow ended while the job was running"
    job.set_state(JobState.STOPPED)
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    lines = out.splitlines()
    assert lines[0].startswith("=== attempt 1")
    assert lines[1:] == [f"[r0 h] line {i}" for i in range(0, 2000, 2)]


def start_rank(job_id, tag=True):
    """A rank stand-in: `sleep` in its own process group, tagged with the job id."""
    env = dict(os.environ)
    env.pop(JOB_ID_ENV, None)
    if tag:
        env[JOB_ID_ENV] = job_id
    return subprocess.Popen(["sleep", "300"], start_new_session=True, env=env)


def record_ranks(job: JobDir, procs, hosts=("host-a", "host-b")):
    job.begin_attempt()
    for rank, proc in enumerate(procs):
        job.record_process(ProcessRecord.for_rank(rank, hosts[rank % 2], proc.pid, os.getpgid(proc.pid)))
    job.set_state(JobState.RUNNING)


def test_stop_kills_exactly_the_groups_of_that_job(runs, env):
    job_a = JobDir.create(runs, cluster="twohost", stage="r1", spec=SPEC, launcher=dead_launcher())
    job_b = JobDir.create(runs, cluster="twohost", stage="r1", spec=SPEC, launcher=dead_launcher())
    ranks_a = [start_rank(job_a.job_id) for _ in range(3)]
    ranks_b = [start_rank(job_b.job_id) for _ in range(2)]
    stranger = start_rank(job_a.job_id, tag=False)
    try:
        # The stranger's group id stands for a recorded group id reused by an unrelated process.
        record_ranks(job_a, ranks_a + [stranger])
        record_ranks(job_b, ranks_b)
        proc = cli("stop", job_a.job_id, "--grace", "5", env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for p in ranks_a:
            assert p.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None
        assert all(p.poll() is None for p in ranks_b)
        record = job_a.read()
        assert record.state == JobState.STOPPED and record.stop_requested
        assert {p.state for p in record.current_attempt.processes} == {RankState.STOPPED}
        assert job_b.read().state == JobState.RUNNING
        again = cli("stop", job_a.job_id, env=env)
        assert again.returncode == 0 and "already ended: STOPPED" in again.stdout
    finally:
        for p in ranks_a + ranks_b + [stranger]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


LAUNCHER = r"""
import os, signal, subprocess, sys, time
from launcher.jobs import JOB_ID_ENV, JobDir, ProcessRecord
from launcher.states import JobState, RankState
from tests.harness.cli import cli, launcher_argv
job = JobDir.create(sys.argv[1], cluster="twohost", stage="r1", spec={})
env = dict(os.environ, **{JOB_ID_ENV: job.job_id})
rank = subprocess.Popen(["sleep", "300"], start_new_session=True, env=env)
job.begin_attempt()
job.record_process(ProcessRecord.for_rank(0, "host-a", rank.pid, rank.pid))
job.set_state(JobState.RUNNING)

def on_term(signum, frame):
    os.killpg(rank.pid, signal.SIGTERM)
    rank.wait()
    job.set_process_state("r0", RankState.STOPPED, exit_code=rank.returncode)
    job.set_state(JobState.STOPPED, "stopped by SIGTERM")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
print(job.job_id, rank.pid, flush=True)
while True:
    time.sleep(1)
"""


def test_stop_asks_a_live_launcher_first(runs, env):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(runs)], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        job_id, rank_pid = launcher.stdout.readline().split()
        code = cli("stop", job_id, "--timeout", "20", env=env)
        assert code.returncode == 0, code.stdout + code.stderr
        assert "asking the launcher" in code.stdout
        assert launcher.wait(timeout=10) == 0
        record = JobDir(runs / job_id).read()
        assert record.state == JobState.STOPPED and record.message == "stopped by SIGTERM"
        with pytest.raises(ProcessLookupError):
            os.kill(int(rank_pid), 0)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


RANK = r"""
import time
step = 0
while True:
    step += 1
    print(f"epoch: 1 step: {step}, loss is {1.0 / step:.4f}", flush=True)
    time.sleep(0.05)
"""


def test_ranks_run_through_the_local_transport_then_stop_status_logs(runs, env):
    from launcher.transport.local import LocalTransport
    from tests.harness.agents import start_attempt

    job = JobDir.create(runs, cluster="twohost", stage="r1", spec=SPEC, launcher=dead_launcher())
    job.begin_attempt()
    with job.open_logs() as agg:
        agg.start_attempt(1)
        events = queue.Queue()
        for rank, host in ((0, "host-a"), (1, "host-b")):
            process = {"name": f"r{rank}", "argv": [sys.executable, "-c", RANK],
                       "env": {JOB_ID_ENV: job.job_id}, "cwd": "/"}
            doc = {"job_id": job.job_id, "attempt": 1, "host": host, "grace": 5.0, "hang_s": None,
                   "files": [], "tails": [], "processes": [process]}
            start_attempt(LocalTransport(host), sys.executable, doc, [agg.rank_sink(rank, host)], [], events)
        statuses = {}

        def next_event():
            event = events.get(timeout=30)
            if event.kind == "started":
                job.record_process(ProcessRecord.for_rank(int(event.host == "host-b"), event.host,
                                                          event.data["pid"], event.data["pgid"]))
            if event.kind == "exit":
                statuses[event.host] = event.data["status"]
            return event

        ready = 0
        while ready < 2:
            ready += next_event().kind == "ready"
        job.set_state(JobState.RUNNING)
        deadline = time.monotonic() + 30
        while [t is not None for t in agg.last_activity().values()] != [True, True]:
            assert time.monotonic() < deadline, "the ranks printed nothing"
            time.sleep(0.05)
        stop = cli("stop", job.job_id, "--grace", "5", env=env, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        while len(statuses) < 2:
            next_event()
        assert statuses == {"host-a": -signal.SIGTERM, "host-b": -signal.SIGTERM}
    res = cli("status", job.job_id, env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    assert code == 0 and "state     STOPPED" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("r0 ", "r1 "))]
    assert [row[4] for row in rows] == ["STOPPED", "STOPPED"]
    res = cli("logs", job.job_id, "--ranks", "1", env=env)
    code, out, _ = res.returncode, res.stdout, res.stderr
    lines = out.splitlines()[1:]
    assert lines and lines[0] == "[r1 host-b] epoch: 1 step: 1, loss is 1.0000"
    assert all(line.startswith("[r1 host-b] epoch: 1 step: ") for line in lines)
    assert job.last_metrics()[0]["loss"] > 0
