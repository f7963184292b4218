"""Any program as the workload (`refinenet-launch ... -- COMMAND`): the documented example restarts
from its own checkpoint after a rank is killed; a program without checkpoints starts over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "train_any.py"


def cluster(folder: Path, max_restarts: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cmd", "backend": "dynamic", "device": "cpu",
        "hosts": [{"name": "local", "ranks": 2, "python": sys.executable, "workdir": str(folder / "work")}],
        "master": {"port": "auto"},
        "restart": {"max_restarts": max_restarts, "backoff_s": 0.5},
        "health": {"check_devices": False, "min_free_disk_gb": 0.1},
        "timeouts": {"cluster_s": 60, "heartbeat_s": 10, "stop_grace_s": 2}}))
    return path


def launch(cluster_path: Path, runs: Path, job_id: str, env: dict, *command: str) -> subprocess.Popen:
    err = open(runs.parent / f"{job_id}.err", "w")
    argv = [sys.executable, "-m", "launcher.cli", "--cluster", str(cluster_path), "--runs-dir", str(runs),
            "--job-id", job_id, "--", *command]
    return subprocess.Popen(argv, env=env, cwd=str(cluster_path.parent), stdout=subprocess.DEVNULL,
                            stderr=err)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"launcher ended early ({proc.returncode})"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s")


def test_the_example_program_resumes_from_its_checkpoint_after_a_rank_is_killed(tmp_path, child_env):
    runs = tmp_path / "runs"
    path = cluster(tmp_path / "c", max_restarts=1)
    proc = launch(path, runs, "cmd-resume", child_env, sys.executable, str(EXAMPLE), "--steps", "30",
                  "--save-every", "10", "--step-s", "0.15")
    job = runs / "cmd-resume"
    wait_for(job / "logs" / "job.log", "epoch: 2 step: 3,", proc)
    ckpt = tmp_path / "c" / "work" / "output" / "command" / "ckpt"
    assert (ckpt / "refinenet-1_10.json").exists()
    record = json.loads((job / "job.json").read_text())
    rank1 = next(p for p in record["attempts"][-1]["processes"] if p["name"] == "r1")
    os.kill(rank1["pid"], signal.SIGKILL)
    assert proc.wait(300) == 0, (runs.parent / "cmd-resume.err").read_text()
    record = json.loads((job / "job.json").read_text())
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"]
    assert record["attempts"][0]["failure"]["signal"] == 9 and record["attempts"][0]["failure"]["rank"] == 1
    assert record["stage"] == "command"
    assert "refinenet-" in record["attempts"][1]["resume"]
    log = (job / "logs" / "rank_0.log").read_text()
    second = log.split("=== attempt 2 started", 1)[1]
    assert "resumed from" in second and "refinenet-" in second
    resumed_after = int(second.split("after global step ")[1].split()[0])
    assert resumed_after >= 10
    first_step = [line for line in second.splitlines() if line.startswith("epoch:")][0]
    epoch, step = int(first_step.split()[1]), int(first_step.split()[3].rstrip(","))
    assert (epoch - 1) * 10 + step == resumed_after + 1
    assert "rank 0: done" in second and (ckpt / "refinenet-3_10.json").exists()


def test_a_program_without_checkpoints_starts_over_and_the_launcher_says_so(tmp_path, child_env):
    runs = tmp_path / "runs"
    path = cluster(tmp_path / "c", max_restarts=1)
    flag = tmp_path / "failed-once"
    script = (f"echo attempt; if [ \"$MS_NODE_ID\" = 1 ] && [ ! -e {flag} ]; then touch {flag}; exit 3; fi; "
              "echo resume=${REFINENET_RESUME:-none}")
    proc = launch(path, runs, "cmd-plain", child_env, "bash", "-c", script)
    assert proc.wait(120) == 0, (runs.parent / "cmd-plain.err").read_text()
    err = (runs.parent / "cmd-plain.err").read_text()
    assert "the next attempt starts from the beginning" in err
    record = json.loads((runs / "cmd-plain" / "job.json").read_text())
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"]
    assert record["attempts"][0]["failure"]["exit_code"] == 3
    assert "resume=none" in (runs / "cmd-plain" / "logs" / "rank_1.log").read_text()


def test_dry_run_shows_the_command_and_bad_combinations_exit_2(tmp_path, child_env):
    path = cluster(tmp_path / "c", max_restarts=0)
    base = [sys.executable, "-m", "launcher.cli", "--cluster", str(path), "--runs-dir",
            str(tmp_path / "runs")]
    shown = subprocess.run([*base, "--dry-run", "--", "python", "train.py", "--resume", "{resume}", "a b"],
                           env=child_env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "exec python train.py 'a b'" in shown.stdout
    both = subprocess.run([*base, "--stage", "r1", "--", "python", "x.py"], env=child_env,
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = subprocess.run(base, env=child_env, capture_output=True, text=True, timeout=60)
    assert neither.returncode == 2 and "nothing to run" in neither.stderr
