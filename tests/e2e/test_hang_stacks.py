"""A hang with real MindSpore ranks: the hang check names the rank stuck in its own code, and where.

Two ranks of tests/e2e/scripts/allreduce_hang.py after `--`, rank 0 on this machine and rank 1 on a
simulated SSH host, form a MindSpore CPU cluster and loop over AllReduce steps; before step STUCK_AT
rank 1 enters its `load_batch`, which never returns, and rank 0 waits in that step's AllReduce
(MindSpore's CPU collectives give up after MS_NODE_TIMEOUT, `timeouts.heartbeat_s`: longer here than the
hang timeout). Rank 1 joins LATE_S late, so rank 0's start-up (imports, then `init()` waiting for the
cluster to form) stays silent for longer than the hang timeout, and must not count as a hang. While
both wait, `refinenet-launch stacks JOB` names rank 1 and `load_batch`; then the hang check fires and
the root cause names them too (file:line), with every rank's stack in JOB/stacks/.
"""
from __future__ import annotations

import json
import sys

import pytest

from launcher.stacks import captures
from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, local_host, ssh_host
from tests.harness.environment import REPO
from tests.harness.launched import LaunchedJob
from tests.harness.procs import tagged

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCRIPT = REPO / "tests" / "e2e" / "scripts" / "allreduce_hang.py"
HANG_S = 15
LATE_S = HANG_S + 5
STUCK_AT = 4
#: Where rank 1 waits: the `while` line of `load_batch` (its `time.sleep` has no Python frame of its own).
STUCK_LINE = next(n for n, text in enumerate(SCRIPT.read_text().splitlines(), 1) if "sleep(3600)" in text)


def first_step_lines(job: LaunchedJob, step: int) -> bool:
    """Both ranks printed their line of `step` (job.log)."""
    lines = [line for line in job.log().splitlines() if f"] epoch: 1 step: {step}," in line]
    return {line.split()[0] for line in lines} == {"[r0", "[r1"}


def test_a_rank_stuck_in_its_own_function_is_named_by_stacks_and_by_the_hang_check(
        tmp_path, ssh_hosts, child_env):
    remote = ssh_hosts[0]
    job_id = "hang-stacks"
    path = cluster_file(tmp_path / "cluster.yaml",
                        [local_host(tmp_path / "local", python=sys.executable), ssh_host(remote)],
                        name="hang", job={}, master={"port": "auto"},
                        health={"hang_timeout_s": HANG_S, "startup_timeout_s": 300},
                        timeouts={"heartbeat_s": 300})
    runs = tmp_path / "runs"
    job = LaunchedJob(path, runs, job_id, child_env, "--", sys.executable, str(SCRIPT),
                      "--stuck-at", str(STUCK_AT), "--late-s", str(LATE_S), stage=None)
    try:
        job.wait_for(f"step {STUCK_AT - 1} of both ranks", lambda: first_step_lines(job, STUCK_AT - 1), 300)
        shown = cli("stacks", job_id, "--runs-dir", runs, env=child_env, timeout=60)
        assert job.wait(120) == 1, job.stderr
    finally:
        job.close()
    assert tagged(job_id) == [], "processes of the job outlived it"
    where = f"`load_batch` (allreduce_hang.py:{STUCK_LINE})"
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"rank 1 on {remote.name}: in {where}"), shown.stdout

    record = job.record()
    (attempt,) = record["attempts"]
    failure = attempt["failure"]
    assert failure["kind"] == "hang", failure
    assert (failure["rank"], failure["host"]) == (1, remote.name), failure
    assert f"stacks: rank 1 on {remote.name}: in {where}" in failure["reason"], failure
    assert "root cause (attempt 1 at " in job.stderr and f"rank 1 on {remote.name}: " in job.stderr
    folders = captures(job.job_dir)
    assert len(folders) == 2, folders  # the `stacks` command's, then the hang check's
    assert (folders[-1] / "summary.txt").read_text().startswith(f"rank 1 on {remote.name}: in {where}")
    ranks = {r["rank"]: r for r in (json.loads(p.read_text()) for p in folders[-1].glob("rank_*.json"))}
    assert sorted(ranks) == [0, 1] and all(r["status"] == "ok" for r in ranks.values()), ranks

    # Each rank's start-up (its process start to its first progress line) was silent for longer than the
    # hang timeout, and was not taken for a hang.
    started = {p["rank"]: p["started"] for p in attempt["processes"] if p["rank"] is not None}
    progress = [json.loads(line) for line in (job.job_dir / "metrics.jsonl").read_text().splitlines()]
    startup = {r: min(p["time"] for p in progress if p["rank"] == r) - at for r, at in started.items()}
    print(f"start-up to the first step: {startup}; hang timeout {HANG_S} s")
    assert all(seconds > HANG_S for seconds in startup.values()), startup
