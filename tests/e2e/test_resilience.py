"""kill -9, resume, and a corrupt newest checkpoint, with the real training workload on CPU ranks.

One job, dynamic cluster: the scheduler and rank 0 on this machine, rank 1 on a simulated host
reached over SSH (its own working and output folder). Three attempts:

1. at a random moment after the first checkpoint, rank 1 (SSH host) is killed with SIGKILL;
2. the job restarts from the newest checkpoint complete on both hosts, found by scanning their
   manifests through the transports, and its ranks continue from that epoch; once it has saved a
   newer checkpoint, that one is truncated on the SSH host and rank 0 (local) is SIGKILLed;
3. the restart skips the truncated checkpoint (and says why), resumes from the previous one and
   finishes the configured epochs.

Afterwards no process of the job is left on either host (REFINENET_JOB_ID in /proc/*/environ).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import yaml

from refinenet import manifest as mf
from tests.e2e.test_resilience_faults import tagged

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 3
STEPS = 3  # 6 training images, 2 ranks, batch 1


def wait_for(what: str, check, launcher: subprocess.Popen, err: Path, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if launcher.poll() is not None:
            raise AssertionError(f"launcher ended ({launcher.returncode}) before {what}:\n{err.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s:\n{err.read_text()[-4000:]}")


def saved(ckpt_dir: Path, newer_than: int = 0) -> List[int]:
    """Epochs of the complete checkpoints in `ckpt_dir` after epoch `newer_than`."""
    entries, _ = mf.scan(ckpt_dir, check_hash=False)
    return sorted(e.manifest.epoch for e in entries if e.manifest.epoch > newer_than)


def attempt_lines(log: str, attempt: int) -> List[str]:
    part = log.split(f"=== attempt {attempt} started", 1)[1]
    return part.split("=== attempt", 1)[0].splitlines()[1:]


def metrics(path: Path) -> List[dict]:
    """The per-step records of a rank's metrics JSONL (its `event` records left out)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "event" not in r]


def test_kill9_resume_and_truncated_checkpoint_local_and_ssh(tmp_path, train_list, ssh_hosts, child_env):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    job_id = f"kill9-{seed}"
    remote = ssh_hosts[0]
    local_dir = tmp_path / "local"
    out = f"out-{job_id}"
    cluster = {
        "name": "kill9", "backend": "dynamic", "device": "cpu",
        "hosts": [{"name": "local", "ranks": 1, "workdir": str(local_dir), "python": sys.executable},
                  {**remote.spec_dict(), "ranks": 1}],
        "job": {"data": str(train_list), "output_dir": out,
                "stage_overrides": {"r1": {"depth": 18, "crop-size": 33, "batch-size": 1, "epochs": EPOCHS,
                                           "save-epochs": 1, "seed": 1, "workers": 1, "base-lr": 0.002,
                                           "mode": "pynative"}}},
        "restart": {"max_restarts": 2, "backoff_s": 1, "backoff_max_s": 1},
        "health": {"interval_s": 10, "check_devices": False, "min_free_disk_gb": 0.1},
        "timeouts": {"cluster_s": 60, "heartbeat_s": 10, "stop_grace_s": 3},
    }
    cluster_path = tmp_path / "cluster.yaml"
    cluster_path.write_text(yaml.safe_dump(cluster))
    ckpt = {"local": local_dir / out / "r1" / "ckpt", remote.name: Path(remote.workdir) / out / "r1" / "ckpt"}
    runs, err = tmp_path / "runs", tmp_path / "launcher.err"
    job_dir = runs / job_id
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "--cluster", str(cluster_path), "--stage", "r1", "--runs-dir",
         str(runs), "--job-id", job_id], env=child_env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
        stderr=open(err, "w"))

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
        wait_for("first checkpoint", lambda: all(saved(d) for d in ckpt.values()), launcher, err)
        delay = rng.uniform(0, 1.5)
        time.sleep(delay)
        os.kill(pid_of("r1", 1), signal.SIGKILL)
        note = f"seed {seed}, killed rank 1 {delay:.2f} s after the first checkpoint"

        # Attempt 2: once it saved a newer checkpoint, truncate that on the SSH host, SIGKILL rank 0.
        wait_for("attempt 2", lambda: attempts() == 2, launcher, err)
        record = json.loads((job_dir / "job.json").read_text())
        resumed = int(re.match(r"refinenet-(\d+)_3\.ckpt", record["attempts"][1]["resume"]).group(1))
        assert 1 <= resumed < EPOCHS, note
        newer = wait_for("a checkpoint of attempt 2",
                         lambda: min(saved(d, resumed)[:1] or [0] for d in ckpt.values())[0], launcher, err)
        victim = ckpt[remote.name] / f"refinenet-{newer}_{STEPS}.ckpt"
        os.truncate(victim, victim.stat().st_size // 2)
        os.kill(pid_of("r0", 2), signal.SIGKILL)

        assert launcher.wait(600) == 0, err.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert tagged(job_id) == [], "processes of the job outlived it"

    stderr = err.read_text()
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
    for rank in (0, 1):
        assert f"] epoch: {EPOCHS} step: {STEPS}, loss is" in "\n".join(
            line for line in attempt_lines(log, 3) if line.startswith(f"[r{rank} "))

    # Epoch, global step and learning rate continue on every rank: attempts 2 and 3 start at the same
    # global step with the same rate, and attempt 3 reaches the end of the schedule.
    for rank, host in ((0, "local"), (1, remote.name)):
        records = metrics(ckpt[host].parent / "metrics" / f"rank_{rank}.jsonl")
        starts = [r for r in records if r["step"] == resumed * STEPS + 1]
        assert len(starts) == 2 and starts[0]["lr"] == starts[1]["lr"] and starts[0]["epoch"] == resumed + 1
        assert records[-1]["step"] == EPOCHS * STEPS and records[-1]["epoch"] == EPOCHS
    for host, folder in ckpt.items():
        assert saved(folder)[-1] == EPOCHS, host
