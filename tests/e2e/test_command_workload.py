"""Any program as the workload (`refinenet-launch ... -- COMMAND`): the documented example restarts
from its own checkpoint after a rank is killed; a program without checkpoints starts over."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, local_host
from tests.harness.environment import REPO
from tests.harness.launched import LaunchedJob

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "docs" / "examples" / "train_any.py"


def cluster(folder: Path, max_restarts: int) -> Path:
    """Two local ranks of this interpreter, no job section: the program comes after `--`."""
    host = local_host(folder / "work", ranks=2, python=sys.executable)
    return cluster_file(folder / "cluster.yaml", [host], name="cmd", job={}, master={"port": "auto"},
                        restart={"max_restarts": max_restarts, "backoff_s": 0.5},
                        timeouts={"stop_grace_s": 2})


def launch(cluster_path: Path, runs: Path, job_id: str, env: dict, *command: str) -> LaunchedJob:
    return LaunchedJob(cluster_path, runs, job_id, env, "--", *command, stage=None)


def test_the_example_program_resumes_from_its_checkpoint_after_a_rank_is_killed(tmp_path, child_env):
    runs = tmp_path / "runs"
    path = cluster(tmp_path / "c", max_restarts=1)
    launched = launch(path, runs, "cmd-resume", child_env, sys.executable, str(EXAMPLE), "--steps", "30",
                      "--save-every", "10", "--step-s", "0.15")
    job = runs / "cmd-resume"
    launched.wait_for("epoch 2 step 3 in job.log", lambda: "epoch: 2 step: 3," in launched.log(), 180, 0.2)
    ckpt = tmp_path / "c" / "work" / "output" / "command" / "ckpt"
    assert (ckpt / "refinenet-1_10.json").exists()
    record = json.loads((job / "job.json").read_text())
    rank1 = next(p for p in record["attempts"][-1]["processes"] if p["name"] == "r1")
    os.kill(rank1["pid"], signal.SIGKILL)
    assert launched.wait(300) == 0, launched.stderr
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
    launched = launch(path, runs, "cmd-plain", child_env, "bash", "-c", script)
    assert launched.wait(120) == 0, launched.stderr
    err = launched.stderr
    assert "the next attempt starts from the beginning" in err
    record = json.loads((runs / "cmd-plain" / "job.json").read_text())
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"]
    assert record["attempts"][0]["failure"]["exit_code"] == 3
    assert "resume=none" in (runs / "cmd-plain" / "logs" / "rank_1.log").read_text()


def test_dry_run_shows_the_command_and_bad_combinations_exit_2(tmp_path, child_env):
    path = cluster(tmp_path / "c", max_restarts=0)
    base = ["--cluster", path, "--runs-dir", tmp_path / "runs"]
    shown = cli(*base, "--dry-run", "--", "python", "train.py", "--resume", "{resume}", "a b", env=child_env)
    assert shown.returncode == 0, shown.stderr
    assert "exec python train.py 'a b'" in shown.stdout
    both = cli(*base, "--stage", "r1", "--", "python", "x.py", env=child_env)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = cli(*base, env=child_env)
    assert neither.returncode == 2 and "nothing to run" in neither.stderr
