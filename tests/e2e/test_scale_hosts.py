"""The launcher on 8 simulated SSH hosts x 4 ranks (and 8 x 8 for log integrity), from outside.

Every host is a real sshd on its own loopback address (127.0.1.1 ...) with its own workdir; every
host's `python` runs the stand-in workload of tests/harness for training commands. The
launcher is driven through its command line only (`refinenet-launch --cluster ... --stage r1`,
`stop`) and observed through its exit code, `runs/<job>/job.json`, `runs/<job>/logs/` and /proc:
processes left behind are found by the job's REFINENET_JOB_ID tag and by sessions still open on
the hosts' sshd, so the checks hold however the launcher arranges its work on a host.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import List

import pytest

from tests.harness import standin
from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, ssh_host
from tests.harness.hosts import SCALE_HOSTS, SshServer, start_servers, stop_servers
from tests.harness.launched import LaunchedJob
from tests.harness.procs import gone_after, gone_within, rank_pids, snapshot, tagged

pytestmark = pytest.mark.e2e

RANKS = 4
WORLD = SCALE_HOSTS * RANKS
UP_TIMEOUT_S = 150
GONE_TIMEOUT_S = 15
#: Bounds the flood test's logs (~200 MB at 64 ranks) where the ranks outrun the 3 s.
FLOOD_MAX_LINES = 20000


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def jobs():
    """Launched jobs; whatever a failing test leaves running is killed by its tag."""
    started: List[LaunchedJob] = []
    yield started
    for job in started:
        job.close()


def launch(jobs, tmp_path, runs, servers, python, env, job_id, *, workload, ranks=RANKS,
           max_restarts=0) -> LaunchedJob:
    """A job of `ranks` stand-in ranks per server, its environment `workload`."""
    path = cluster_file(tmp_path / job_id / "cluster.yaml",
                        [ssh_host(s.host(), ranks=ranks, python=python) for s in servers], name=job_id,
                        env=workload, lists=("train.lst",), restart={"max_restarts": max_restarts},
                        timeouts={"cluster_s": 120, "heartbeat_s": 30})
    job = LaunchedJob(path, runs, job_id, env)
    jobs.append(job)
    return job


def sessions_closed(servers: List[SshServer], timeout: float = 5) -> list:
    """Session processes still open on any of `servers` after `timeout` seconds (empty when all closed)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for s in servers for p in s.sessions()]
        if not left or time.monotonic() > deadline:
            return [(p.pid, " ".join(p.cmdline())[:120]) for p in left if p.is_running()]
        time.sleep(0.1)


def test_every_rank_on_8_hosts_comes_up_and_the_job_succeeds(tmp_path, runs, jobs, scale_servers,
                                                              standin_python, child_env):
    steps = 8
    job = launch(jobs, tmp_path, runs, scale_servers, standin_python, child_env, "scale-up",
                 workload=standin.steps_env(0.25, steps))
    up = job.ranks_up(WORLD, timeout=UP_TIMEOUT_S)
    assert job.wait(UP_TIMEOUT_S) == 0, job.stderr
    record = job.record()
    assert record["state"] == "SUCCEEDED" and len(record["attempts"]) == 1
    for rank in range(WORLD):
        lines = (job.job_dir / "logs" / f"rank_{rank}.log").read_text().splitlines()
        assert standin.step_numbers(lines) == list(range(1, steps + 1)), f"rank {rank}: {lines[-5:]}"
    for index, server in enumerate(scale_servers):
        metrics = sorted(p.name for p in Path(server.workdir).glob("out/r1/metrics/rank_*.jsonl"))
        assert metrics == sorted(f"rank_{r}.jsonl" for r in range(index * RANKS, (index + 1) * RANKS)), \
            f"{server.name} ran {metrics}"
    assert tagged("scale-up") == []
    assert sessions_closed(scale_servers) == []
    print(f"\n{WORLD} ranks on {SCALE_HOSTS} hosts: all up {up:.1f} s after the launcher started")


def test_kill_9_of_one_rank_ends_the_job_on_every_host_and_it_restarts(tmp_path, runs, jobs, scale_servers,
                                                                       standin_python, child_env):
    job = launch(jobs, tmp_path, runs, scale_servers, standin_python, child_env, "scale-kill9",
                 workload=standin.steps_env(0.25), max_restarts=1)
    job.ranks_up(WORLD, timeout=UP_TIMEOUT_S)
    victim = WORLD // 2 + 1
    first_attempt = snapshot("scale-kill9")
    pids = rank_pids("scale-kill9")
    assert sorted(pids) == list(range(WORLD)), sorted(pids)
    killed = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    gone, left = gone_after(first_attempt, killed, GONE_TIMEOUT_S)
    assert not left, f"{len(left)} processes of attempt 1 alive {GONE_TIMEOUT_S} s after kill -9 of {victim}"
    job.ranks_up(WORLD, attempt=2, timeout=UP_TIMEOUT_S)
    first = job.record()["attempts"][0]
    assert first["state"] == "FAILED" and first["failure"]["rank"] == victim, first["failure"]
    stop = cli("stop", "scale-kill9", "--runs-dir", runs, env=child_env, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert job.wait(60) == 1, job.stderr
    record = job.record()
    assert record["state"] == "STOPPED" and [a["state"] for a in record["attempts"]] == ["FAILED", "STOPPED"]
    assert gone_within("scale-kill9", 5) == []
    assert sessions_closed(scale_servers) == []
    print(f"\nkill -9 of rank {victim}: every process of attempt 1 gone after {gone:.2f} s")


def test_sigint_stops_the_job_on_every_host(tmp_path, runs, jobs, scale_servers, standin_python, child_env):
    job = launch(jobs, tmp_path, runs, scale_servers, standin_python, child_env, "scale-sigint",
                 workload=standin.steps_env(0.25))
    job.ranks_up(WORLD, timeout=UP_TIMEOUT_S)
    procs = snapshot("scale-sigint")
    sent = time.monotonic()
    job.kill(signal.SIGINT)
    gone, left = gone_after(procs, sent, GONE_TIMEOUT_S)
    assert not left, f"{len(left)} processes alive {GONE_TIMEOUT_S} s after SIGINT"
    assert job.wait(60) == 1, job.stderr
    record = job.record()
    assert record["state"] == "STOPPED" and [a["state"] for a in record["attempts"]] == ["STOPPED"]
    assert tagged("scale-sigint") == []
    assert sessions_closed(scale_servers) == []
    print(f"\nSIGINT: every process gone after {gone:.2f} s, launcher exited "
          f"{time.monotonic() - sent:.2f} s after it")


def test_a_sigkilled_launcher_leaves_nothing_on_any_host(tmp_path, runs, jobs, scale_servers, standin_python,
                                                         child_env):
    job = launch(jobs, tmp_path, runs, scale_servers, standin_python, child_env, "scale-orphans",
                 workload=standin.steps_env(0.25))
    job.ranks_up(WORLD, timeout=UP_TIMEOUT_S)
    procs = snapshot("scale-orphans")
    assert len(procs) >= WORLD
    killed = time.monotonic()
    job.kill(signal.SIGKILL)
    gone, left = gone_after(procs, killed, 5)
    assert not left, f"{len(left)} processes of the job alive 5 s after the launcher was SIGKILLed"
    assert tagged("scale-orphans") == []
    assert sessions_closed(scale_servers) == []
    print(f"\nlauncher SIGKILLed: every process gone after {gone:.2f} s")


@pytest.fixture
def stock_server(tmp_path, ssh_client_key):
    """One sshd with OpenSSH's default limits (MaxSessions 10, MaxStartups 10:30:100)."""
    servers = start_servers(tmp_path / "stock", ssh_client_key, 1, base="127.0.2.", name="stock-{:03d}",
                            max_sessions=None)
    try:
        yield servers[0]
    finally:
        stop_servers(servers)


def test_16_ranks_on_one_host_under_default_sshd_limits(tmp_path, runs, jobs, stock_server, standin_python,
                                                        child_env):
    ranks, steps = 16, 8
    assert "MaxSessions" not in stock_server.config.read_text()
    job = launch(jobs, tmp_path, runs, [stock_server], standin_python, child_env, "scale-stock",
                 ranks=ranks, workload=standin.steps_env(0.25, steps))
    job.ranks_up(ranks, timeout=UP_TIMEOUT_S)
    assert job.wait(UP_TIMEOUT_S) == 0, job.stderr
    assert job.record()["state"] == "SUCCEEDED"
    for rank in range(ranks):
        lines = (job.job_dir / "logs" / f"rank_{rank}.log").read_text().splitlines()
        assert standin.step_numbers(lines) == list(range(1, steps + 1)), f"rank {rank}: {lines[-5:]}"
    assert tagged("scale-stock") == []


def test_lines_of_64_ranks_printing_flat_out_arrive_whole_in_order_and_all(tmp_path, runs, jobs,
                                                                           scale_servers, standin_python,
                                                                           child_env):
    ranks = 8
    world = SCALE_HOSTS * ranks
    job = launch(jobs, tmp_path, runs, scale_servers, standin_python, child_env, "scale-lines", ranks=ranks,
                 workload=standin.flood_env(3, max_lines=FLOOD_MAX_LINES))
    assert job.wait(UP_TIMEOUT_S + 60) == 0, job.stderr
    logs = job.job_dir / "logs"
    total = standin.FloodCheck()
    for rank in range(world):
        with open(logs / f"rank_{rank}.log", errors="replace") as f:
            check = standin.check_flood_lines(f, f"rank_{rank}.log", only_rank=rank)
        assert not check.problems, "\n".join(check.problems)
        assert check.announced.get(rank, 0) > 0, f"rank {rank} printed nothing"
        total.seen.update(check.seen)
    with open(logs / "job.log", errors="replace") as f:
        joined = standin.check_flood_lines(f, "job.log")
    assert not joined.problems, "\n".join(joined.problems)
    assert joined.seen == total.seen and sorted(joined.announced) == list(range(world))
    assert joined.lost == 0
    assert tagged("scale-lines") == []
    print(f"\n{world} ranks printed {sum(joined.seen.values())} lines, every one whole, in order, none lost")
