"""kill -9, resume, and a corrupt newest checkpoint, with the real training workload on CPU ranks.

One job, dynamic cluster: the scheduler and rank 0 on this machine, rank 1 on a simulated host
reached over SSH (its own working and output folder). Three attempts:

1. at a random moment after the first checkpoint, rank 1 (SSH host) is killed with SIGKILL;
2. the job restarts from the newest checkpoint complete on both hosts, found by scanning their
   manifests through the transports, and its ranks continue from that epoch; once it has saved a
   newer checkpoint, that one is truncated on the SSH host and rank 0 (local) is SIGKILLed;
3. the restart skips the truncated checkpoint (and says why), resumes from the previous one and
   finishes the configured epochs.

Afterwards no process of the job is left on either host (REFINENET_JOB_ID in /proc/*/environ), and
what attempt 1's failure cost (its recovery record: every phase, from the rank's death to the first
resumed step) agrees with the same moments read from the ranks' metrics files; the restarted attempt
starts from interpreters imported ahead (warm), finds its graphs in the compile cache, and reaches its
first step sooner than the cold start did. The ratio is printed; the goal (0.6x) is measured by
benchmarks/failure_recovery.py, not asserted here: with rank 1 over SSH it is 0.59-0.75x on a quiet
machine, most of the rest being MindSpore's cluster formation (docs/performance.md), and a timed bound
would fail with the machine's load. The job runs in graph mode, the workload's default: in PyNative
mode nothing is compiled ahead and a warm restart saves only the imports.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import List

import pytest

from launcher.recovery import BOUNDS
from tests.harness import metrics
from tests.harness.checkpoints import saved_epochs
from tests.harness.cli import cli
from tests.harness.clusters import TINY_R1, cluster_file, local_host, ssh_host
from tests.harness.launched import LaunchedJob
from tests.harness.metrics import first_step_time
from tests.harness.procs import tagged

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

R1 = {**TINY_R1, "mode": "graph"}
EPOCHS = R1["epochs"]
STEPS = 3  # 6 training images, 2 ranks, batch 1
WAIT_S = 420


def attempt_lines(log: str, attempt: int) -> List[str]:
    part = log.split(f"=== attempt {attempt} started", 1)[1]
    return part.split("=== attempt", 1)[0].splitlines()[1:]


def test_kill9_resume_and_truncated_checkpoint_local_and_ssh(tmp_path, train_list, ssh_hosts, child_env):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    job_id = f"kill9-{seed}"
    remote = ssh_hosts[0]
    local_dir = tmp_path / "local"
    out = f"out-{job_id}"
    cluster_path = cluster_file(
        tmp_path / "cluster.yaml", [local_host(local_dir, python=sys.executable), ssh_host(remote)],
        name="kill9", restart={"max_restarts": 2}, health={"interval_s": 10},
        job={"data": str(train_list), "output_dir": out, "stage_overrides": {"r1": R1}})
    ckpt = {"local": local_dir / out / "r1" / "ckpt", remote.name: Path(remote.workdir) / out / "r1" / "ckpt"}
    runs = tmp_path / "runs"
    job_dir = runs / job_id
    launcher = LaunchedJob(cluster_path, runs, job_id, child_env)

    def pid_of(name: str, attempt: int) -> int:
        record = json.loads((job_dir / "job.json").read_text())
        assert len(record["attempts"]) == attempt, record["attempts"]
        return next(p["pid"] for p in record["attempts"][-1]["processes"] if p["name"] == name)

    def attempts() -> int:
        try:
            return len(json.loads((job_dir / "job.json").read_text())["attempts"])
        except (OSError, ValueError):
            return 0

    try:
        # Attempt 1: SIGKILL rank 1 on the SSH host at a random moment after the first checkpoint.
        launcher.wait_for("first checkpoint", lambda: all(saved_epochs(d) for d in ckpt.values()), WAIT_S)
        delay = rng.uniform(0, 1.5)
        time.sleep(delay)
        os.kill(pid_of("r1", 1), signal.SIGKILL)
        note = f"seed {seed}, killed rank 1 {delay:.2f} s after the first checkpoint"

        # Attempt 2: once it saved a newer checkpoint, truncate that on the SSH host, SIGKILL rank 0.
        launcher.wait_for("attempt 2", lambda: attempts() == 2, WAIT_S)
        record = json.loads((job_dir / "job.json").read_text())
        resumed = int(re.match(r"refinenet-(\d+)_3\.ckpt", record["attempts"][1]["resume"]).group(1))
        assert 1 <= resumed < EPOCHS, note
        newer = launcher.wait_for(
            "a checkpoint of attempt 2",
            lambda: min(saved_epochs(d, resumed)[:1] or [0] for d in ckpt.values())[0], WAIT_S)
        victim = ckpt[remote.name] / f"refinenet-{newer}_{STEPS}.ckpt"
        os.truncate(victim, victim.stat().st_size // 2)
        os.kill(pid_of("r0", 2), signal.SIGKILL)

        assert launcher.wait(600) == 0, launcher.stderr
    finally:
        launcher.kill()
    assert tagged(job_id) == [], "processes of the job outlived it"

    stderr = launcher.stderr
    record = json.loads((job_dir / "job.json").read_text())
    assert record["state"] == "SUCCEEDED", stderr
    a1, a2, a3 = record["attempts"]
    assert (a1["state"], a2["state"], a3["state"]) == ("FAILED", "FAILED", "SUCCEEDED")
    how = [(a["failure"]["rank"], a["failure"]["host"], a["failure"]["signal"]) for a in (a1, a2)]
    assert how == [(1, remote.name, 9), (0, "local", 9)], note
    name = f"refinenet-{resumed}_{STEPS}.ckpt"
    assert a2["resume"] == f"{name} (epoch {resumed}, global step {resumed * STEPS})"
    assert a3["resume"].startswith(f"refinenet-{resumed}_{STEPS}.ckpt (epoch {resumed},")
    assert f"not used: refinenet-{newer}_{STEPS}.ckpt on {remote.name}: " in a3["resume"]
    assert f"checkpoint not used: refinenet-{newer}_{STEPS}.ckpt on {remote.name}: size" in stderr
    assert f"resuming from {name}" in stderr and "falling back to an older one" in stderr

    log = (job_dir / "logs" / "job.log").read_text()
    for attempt in (2, 3):
        lines = attempt_lines(log, attempt)
        for rank, host in ((0, "local"), (1, remote.name)):
            own = [line for line in lines if line.startswith(f"[r{rank} {host}] ")]
            starts = [line for line in own if "training starts from resume point" in line]
            assert len(starts) == 1 and starts[0].endswith(
                f"{ckpt[host]}/refinenet-{resumed}_{STEPS}.ckpt at epoch {resumed}, "
                f"global step {resumed * STEPS}"), starts
            steps = [line for line in own if "loss is" in line]
            assert steps and f"epoch: {resumed + 1} step: 1," in steps[0], (attempt, rank, steps[:2])
            found = [re.search(r"compile cache: \S+ \((\d+) graphs of rank", line) for line in own]
            cached = [int(m.group(1)) for m in found if m]
            assert cached and cached[0] >= 1, (attempt, rank, own[:5])  # the graphs attempt 1 compiled
    for rank in (0, 1):
        assert f"] epoch: {EPOCHS} step: {STEPS}, loss is" in "\n".join(
            line for line in attempt_lines(log, 3) if line.startswith(f"[r{rank} "))

    # Epoch, global step and learning rate continue on every rank: attempts 2 and 3 start at the same
    # global step with the same rate, and attempt 3 reaches the end of the schedule.
    for rank, host in ((0, "local"), (1, remote.name)):
        records = metrics.steps(ckpt[host].parent / "metrics" / f"rank_{rank}.jsonl")
        # attempt 1 may have computed that step too, before its kill
        starts = [r for r in records if r["step"] == resumed * STEPS + 1 and r["time"] >= a2["started"]]
        assert len(starts) == 2 and starts[0]["lr"] == starts[1]["lr"] and starts[0]["epoch"] == resumed + 1
        assert records[-1]["step"] == EPOCHS * STEPS and records[-1]["epoch"] == EPOCHS
    for host, folder in ckpt.items():
        assert saved_epochs(folder)[-1] == EPOCHS, host

    # What attempt 1's failure cost, recorded with it: every phase, adding up to the whole, which is the
    # time from the rank's death to the first resumed step as the ranks' own metrics records give it.
    recovery = a1["recovery"]
    phases = recovery["phases"]
    assert list(phases) == [name for _, name in BOUNDS[1:]], recovery
    assert all(seconds is not None for seconds in phases.values()), recovery
    assert abs(sum(phases.values()) - recovery["total_s"]) <= 0.05, recovery
    files = [ckpt["local"].parent / "metrics" / "rank_0.jsonl",
             ckpt[remote.name].parent / "metrics" / "rank_1.jsonl"]
    first_resumed = first_step_time(files, a2["started"])
    assert recovery["failed_at"] == a1["failure"]["time"]
    measured = first_resumed - a1["failure"]["time"]
    assert abs(recovery["total_s"] - measured) <= 1.0, (recovery, first_resumed)
    # The restart's ranks came from interpreters imported ahead and found their graphs compiled: from their
    # start to the first step they take less time than the cold first attempt (its processes' start to its
    # first step); the ratio is printed (its goal, 0.6x, is the benchmark's).
    cold = first_step_time(files, a1["started"]) - max(p["started"] for p in a1["processes"])
    warm = recovery["first_step_at"] - recovery["started_at"]
    print(f"{note}; recovery {recovery['total_s']:.2f} s {phases}; start to first step: cold {cold:.2f} s, "
          f"warm {warm:.2f} s ({warm / cold:.2f}x)")
    assert recovery["start"] == "warm", recovery
    assert warm < cold, (warm, cold, recovery)
    status = cli("status", job_id, "--runs-dir", runs, env=child_env)
    assert status.returncode == 0, status.stderr
    assert f"recovery: {recovery['total_s']:.1f} s to the first resumed step (detect " in status.stdout, \
        status.stdout
