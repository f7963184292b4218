"""`--stage r1,r2,eval` (and `all`) as one job, with the stand-in workload through each host's `python`.

The stand-in (tests/harness) trains by printing step lines and writing a checkpoint (with its manifest)
per epoch into its `--output-dir`; evaluation prints a mean IoU. r2 fails once, in its second epoch
after that epoch's checkpoint: the job restarts r2 alone, from r2's own checkpoint, then runs eval, and
ends 0.
"""
from __future__ import annotations

import json

import pytest

from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, local_host
from tests.harness.standin import steps_env

pytestmark = pytest.mark.e2e


def test_r1_r2_eval_run_as_one_job_and_a_failing_stage_restarts_alone(tmp_path, standin_python, child_env):
    work = tmp_path / "work"
    env = steps_env(0.2, 1, epochs=3, checkpoints=1, fail_stage="r2", fail_rank=1, fail_at=2, fail_code=3,
                    fail_once=tmp_path / "r2-failed")
    cluster = cluster_file(tmp_path / "cluster.yaml", [local_host(work, ranks=2, python=standin_python)],
                           name="stages", env=env, lists=("train.lst", "val.lst"),
                           job={"data": "train.lst", "val_data": "val.lst", "output_dir": "out"},
                           restart={"max_restarts": 1, "backoff_s": 0.2, "backoff_max_s": 0.2},
                           timeouts={"stop_grace_s": 2})
    runs = tmp_path / "runs"
    res = cli("--cluster", cluster, "--stage", "all", "--runs-dir", runs, "--job-id", "chain", env=child_env,
              timeout=300)
    assert res.returncode == 0, res.stderr
    record = json.loads((runs / "chain" / "job.json").read_text())
    assert record["stage"] == "r1,r2,eval" and record["state"] == "SUCCEEDED"
    assert [(a["stage"], a["state"]) for a in record["attempts"]] == [
        ("r1", "SUCCEEDED"), ("r2", "FAILED"), ("r2", "SUCCEEDED"), ("eval", "SUCCEEDED")]
    failure = record["attempts"][1]["failure"]
    assert failure["rank"] == 1 and failure["exit_code"] == 3
    assert record["attempts"][2]["resume"].startswith("refinenet-")
    log = (runs / "chain" / "logs" / "job.log").read_text()
    third = log.split("=== attempt 3 started", 1)[1].split("=== attempt 4", 1)[0]
    assert f"resumed from {work}/out/r2/ckpt/refinenet-" in third
    assert f"r2 pretrained latest:{work}/out/r1/ckpt" in log
    assert f"evaluating latest:{work}/out/r2/ckpt" in log and "mean IoU 0.7311" in log
    assert "[launcher] stage r2 (2 of 3) starts" in log and "[launcher] stage eval (3 of 3) starts" in log
    status = cli("status", "chain", "--runs-dir", runs, env=child_env)
    assert "stage r1,r2,eval (now eval)" in status.stdout and "3 r2 SUCCEEDED" in status.stdout
    listed = cli("list", "--runs-dir", runs, env=child_env)
    assert "r1,r2,[eval]" in listed.stdout


def test_stage_lists_are_checked(tmp_path, child_env):
    for bad, why in (("r1,r9", "'r9' is not a stage"), ("r1,r1", "names a stage twice")):
        res = cli("--cluster", "local-cpu", "--dry-run", "--stage", bad, env=child_env, cwd=tmp_path)
        assert res.returncode == 2 and why in res.stderr
