"""`--stage r1,r2,eval` (and `all`) as one job, with a stand-in workload through each host's `python`.

The stand-in trains by printing step lines and writing a checkpoint (with its manifest) per epoch
into its `--output-dir`; evaluation prints a mean IoU. r2 fails once, after its first checkpoint:
the job restarts r2 alone, from r2's own checkpoint, then runs eval, and ends 0.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

pytestmark = pytest.mark.e2e

STANDIN = textwrap.dedent('''
    import argparse, os, sys, time
    from refinenet import manifest
    role = sys.argv[1]
    if role == "scheduler":
        print("scheduler up", flush=True)
        while True:
            time.sleep(60)
    p = argparse.ArgumentParser()
    p.add_argument("--stage")
    p.add_argument("--output-dir")
    p.add_argument("--resume")
    p.add_argument("--pretrained")
    p.add_argument("--ckpt")
    args, _ = p.parse_known_args(sys.argv[2:])
    if role == "eval":
        print(f"evaluating {args.ckpt}", flush=True)
        print("mean IoU 0.7311", flush=True)
        sys.exit(0)
    rank = int(os.environ["MS_NODE_ID"])
    start = 1
    if args.resume:
        start = manifest.parse_ckpt_name(os.path.basename(args.resume))[0] + 1
        print(f"resumed from {args.resume}", flush=True)
    print(f"{args.stage} pretrained {args.pretrained}", flush=True)
    ckpt = os.path.join(args.output_dir, "ckpt")
    os.makedirs(ckpt, exist_ok=True)
    flag = os.path.join(os.environ["FLAGS"], "r2-failed")
    for epoch in range(start, 4):
        time.sleep(0.2)
        print(f"epoch: {epoch} step: 1, loss is {1.0 / epoch:.4f}", flush=True)
        if rank == 0:
            path = os.path.join(ckpt, manifest.ckpt_name(epoch, 1))
            with open(path, "wb") as f:
                f.write(b"weights %d" % epoch)
            manifest.mark_complete(path, epoch=epoch, step=1, steps_per_epoch=1, stage=args.stage)
        if args.stage == "r2" and rank == 1 and epoch == 2 and not os.path.exists(flag):
            time.sleep(0.5)
            open(flag, "w").close()
            print("Traceback (most recent call last): r2 gives up once", flush=True)
            sys.exit(3)
''')

WRAPPER = """#!/bin/bash
case "$2" in
  refinenet.train) shift 2; exec {py} {standin} rank "$@";;
  refinenet.evaluate) shift 2; exec {py} {standin} eval "$@";;
  refinenet.scheduler) shift 2; exec {py} {standin} scheduler "$@";;
esac
exec {py} "$@"
"""


def test_r1_r2_eval_run_as_one_job_and_a_failing_stage_restarts_alone(tmp_path, child_env):
    (tmp_path / "standin.py").write_text(STANDIN)
    wrapper = tmp_path / "python"
    wrapper.write_text(WRAPPER.format(py=sys.executable, standin=tmp_path / "standin.py"))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train.lst", "val.lst"):
        (work / name).write_text("a.jpg a.png\n")
    (tmp_path / "flags").mkdir()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "stages", "backend": "dynamic", "device": "cpu",
        "hosts": [{"name": "local", "ranks": 2, "python": str(wrapper), "workdir": str(work)}],
        "env": {"FLAGS": str(tmp_path / "flags")},
        "job": {"data": "train.lst", "val_data": "val.lst", "output_dir": "out"},
        "restart": {"max_restarts": 1, "backoff_s": 0.2, "backoff_max_s": 0.2},
        "health": {"check_devices": False, "min_free_disk_gb": 0.1},
        "timeouts": {"stop_grace_s": 2}}))
    runs = tmp_path / "runs"
    res = subprocess.run([sys.executable, "-m", "launcher.cli", "--cluster", str(cluster), "--stage", "all",
                          "--runs-dir", str(runs), "--job-id", "chain"], env=child_env, capture_output=True,
                         text=True, timeout=300)
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
    status = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "chain", "--runs-dir",
                             str(runs)], env=child_env, capture_output=True, text=True, timeout=60)
    assert "stage r1,r2,eval (now eval)" in status.stdout and "3 r2 SUCCEEDED" in status.stdout
    listed = subprocess.run([sys.executable, "-m", "launcher.cli", "list", "--runs-dir", str(runs)],
                            env=child_env, capture_output=True, text=True, timeout=60)
    assert "r1,r2,[eval]" in listed.stdout


def test_stage_lists_are_checked(tmp_path, child_env):
    base = [sys.executable, "-m", "launcher.cli", "--cluster", "local-cpu", "--dry-run"]
    for bad, why in (("r1,r9", "'r9' is not a stage"), ("r1,r1", "names a stage twice")):
        res = subprocess.run([*base, "--stage", bad], env=child_env, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert res.returncode == 2 and why in res.stderr
