"""Any program as the workload (`refinenet-launch ... -- COMMAND`): the documented example restarts
from its own checkpoint after a rank is killed, and stops with a checkpoint on a save request; a
program without checkpoints starts over."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refinenet import manifest as mf
from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, local_host
from tests.harness.environment import REPO, free_port
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


def start_example_ranks(folder: Path, child_env: dict, *args: str, rank_env=None) -> list:
    """The example as two ranks of a dynamic cluster started by hand, each rank a host of its own."""
    base = dict(child_env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()), MS_WORKER_NUM="2")
    logs = [open(folder / name, "a") for name in ("scheduler.log", "rank0.log", "rank1.log")]
    procs = [subprocess.Popen([sys.executable, "-m", "refinenet.scheduler"], env=base, stdout=logs[0],
                              stderr=subprocess.STDOUT)]
    for rank in range(2):
        out = folder / f"host{rank}"
        env = dict(base, MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank), LOCAL_RANK="0",
                   REFINENET_OUTPUT_DIR=str(out), REFINENET_CKPT_DIR=str(out / "ckpt"),
                   **(rank_env(rank) if rank_env else {}))
        procs.append(subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env, stdout=logs[rank + 1],
                                      stderr=subprocess.STDOUT))
    return procs


def finish(folder: Path, procs: list, timeout: float = 240) -> list:
    try:
        codes = [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [(folder / f"rank{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0, 0], "\n".join(t[-2000:] for t in texts)
    return texts


def example_records(folder: Path, rank: int) -> list:
    path = folder / f"host{rank}" / "metrics" / f"rank_{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_example_program_stops_on_request_at_the_same_step_and_resumes_exactly(tmp_path, child_env):
    args = ("--steps", "30", "--save-every", "10")
    (tmp_path / "plain").mkdir()
    plain = finish(tmp_path / "plain", start_example_ranks(tmp_path / "plain", child_env, *args))
    done = [re.search(r"rank \d: done, w=\S+ b=\S+", t).group(0) for t in plain]

    folder = tmp_path / "asked"
    folder.mkdir()
    requests = [folder / f"request{rank}" for rank in range(2)]
    env = {rank: {"REFINENET_SAVE_REQUEST": str(requests[rank]), "REFINENET_JOB_ID": "example"}
           for rank in range(2)}
    procs = start_example_ranks(folder, child_env, *args, "--step-s", "0.1", rank_env=env.get)
    deadline = time.monotonic() + 180
    while not any(r.get("step", 0) >= 12 for r in example_records(folder, 0)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no step 12"
        time.sleep(0.05)
    requests[1].touch()  # only rank 1 is asked
    texts = finish(folder, procs)
    stops = [re.search(r"saved on request at epoch (\d+) step (\d+) \(global step (\d+)\): (\S+)", t)
             for t in texts]
    assert all(stops), texts
    assert stops[0].groups()[:3] == stops[1].groups()[:3]
    global_step = int(stops[0].group(3))
    assert 12 <= global_step < 30 and not requests[1].exists()
    paths = [Path(m.group(4)) for m in stops]
    assert [p.parent for p in paths] == [folder / f"host{rank}" / "ckpt" for rank in range(2)]
    assert all(mf.verify(p).job_id == "example" and mf.verify(p).global_step == global_step for p in paths)
    for rank in range(2):
        records = example_records(folder, rank)
        assert [r["event"] for r in records if "event" in r] == [
            "process_start", "imports", "cluster", "first_step", "saved_on_request"]
        assert [r["step"] for r in records if "event" not in r] == list(range(1, global_step + 1))

    resumed = {rank: dict(env[rank], REFINENET_RESUME=str(paths[rank])) for rank in range(2)}
    texts = finish(folder, start_example_ranks(folder, child_env, *args, rank_env=resumed.get))
    for rank in range(2):
        second = texts[rank].split(f"resumed from {paths[rank]} after global step {global_step}", 1)[1]
        first_step = next(line for line in second.splitlines() if line.startswith("epoch:"))
        assert first_step.startswith(f"epoch: {global_step // 10 + 1} step: {global_step % 10 + 1},")
        assert done[rank] in second
        records = example_records(folder, rank)
        assert [r["step"] for r in records if "event" not in r] == list(range(1, 31))
        loaded = [r for r in records if r.get("event") == "checkpoint_loaded"]
        assert [(r["checkpoint"], r["step"]) for r in loaded] == [(str(paths[rank]), global_step)]
