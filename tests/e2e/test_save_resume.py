"""A lost host agent, then save on stop and resume, with the real training workload on CPU ranks.

One r1 job of a tiny RefineNet, rank 0 on this machine and rank 1 on a simulated SSH host (its own
folders), 2 epochs of STEPS steps:

1. once epoch 1's checkpoint is on both hosts, the SSH host's AGENT is SIGKILLed: within 2 s nothing of
   the job is left on that host, the launcher says what happened and restarts from that checkpoint;
2. once the restarted attempt made its first step, `refinenet-launch stop JOB --save`: the ranks finish
   their step inside epoch 2, save and stop; the job ends STOPPED naming the saved step;
3. `refinenet-launch resume JOB` continues from the step after the saved one to SUCCEEDED, no global
   step computed twice across the save and the resume;

and the final checkpoint equals, tensor for tensor, that of an uninterrupted run of the same stage
configuration (the two ranks started directly, without the launcher, while the job runs).
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Iterator, List

import psutil
import pytest

from refinenet import ckpt_reader
from tests.e2e import warm_job
from tests.harness import metrics
from tests.harness.checkpoints import saved_epochs
from tests.harness.cli import cli
from tests.harness.clusters import TINY_R1, cluster_file, local_host, ssh_host, stage_args
from tests.harness.data import TRAIN_LIST, make_dataset
from tests.harness.environment import free_port
from tests.harness.launched import LaunchedJob
from tests.harness.procs import cmdline, gone_after, identity, ssh_server, tagged, tagged_on

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS, STEPS = 2, 5  # 10 training images, 2 ranks, batch 1
R1 = {**TINY_R1, "epochs": EPOCHS}
WAIT_S = 420
FINAL = f"refinenet-{EPOCHS}_{STEPS}.ckpt"


@pytest.fixture
def data(tmp_path) -> Path:
    """The training list of 10 synthetic images: STEPS steps per epoch."""
    return make_dataset(tmp_path / "data", images=20) / TRAIN_LIST


@pytest.fixture
def reference(tmp_path, data) -> Iterator[List[warm_job.Running]]:
    """An uninterrupted r1 of the same configuration, started now (its final checkpoint: FINAL in
    `tmp_path/reference/ckpt`): the scheduler and two ranks started directly on this machine."""
    folder = tmp_path / "reference"
    args = ["--stage", "r1", "--device", "cpu", "--data", str(data), "--output-dir", str(folder),
            *stage_args(R1)]
    specs = warm_job.attempt_processes(free_port(), 2, args, warm_job.job_env())
    procs = warm_job.start_cold(specs, tmp_path)
    yield procs
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def test_lost_agent_then_save_on_stop_and_resume_match_an_uninterrupted_run(
        tmp_path, ssh_hosts, child_env, data, reference):
    remote = ssh_hosts[0]
    job_id = "save-resume"
    local_dir = tmp_path / "local"
    out = f"out-{job_id}"
    path = cluster_file(tmp_path / "cluster.yaml",
                        [local_host(local_dir, python=sys.executable), ssh_host(remote)], name="save",
                        restart={"max_restarts": 1}, health={"interval_s": 10}, timeouts={"heartbeat_s": 30},
                        job={"data": str(data), "output_dir": out, "stage_overrides": {"r1": R1}})
    output = {"local": local_dir / out / "r1", remote.name: Path(remote.workdir) / out / "r1"}
    ckpt = {host: folder / "ckpt" for host, folder in output.items()}
    files = [output["local"] / "metrics" / "rank_0.jsonl", output[remote.name] / "metrics" / "rank_1.jsonl"]
    runs = tmp_path / "runs"
    job = LaunchedJob(path, runs, job_id, child_env)
    try:
        # 1. SIGKILL of the SSH host's agent (the parent of its rank) once epoch 1 is saved on both hosts.
        job.wait_for("epoch 1's checkpoint on both hosts",
                     lambda: all(saved_epochs(d) for d in ckpt.values()), WAIT_S)
        rank1 = next(p for p in job.record()["attempts"][0]["processes"] if p["name"] == "r1")
        agent = psutil.Process(rank1["pid"]).parent()
        assert "agent" in cmdline(agent.pid) and ssh_server(agent.pid) == remote.address, cmdline(agent.pid)
        there = {i for i in map(identity, [agent.pid, *tagged_on(job_id, remote.address)]) if i}
        assert identity(rank1["pid"]) in there, there
        agent.kill()
        killed = time.monotonic()
        gone, left = gone_after(there, killed, 2.0)
        assert left == [], f"alive on {remote.name} 2 s after its agent died: {[cmdline(p) for p in left]}"

        # 2. stop --save once the restarted attempt made its first step.
        job.wait_for("attempt 2", lambda: len(job.record()["attempts"]) == 2, WAIT_S)
        started = job.record()["attempts"][1]["started"]
        job.wait_for("attempt 2's first step", lambda: metrics.first_step_time(files, started), WAIT_S)
        stop = cli("stop", job_id, "--save", "--runs-dir", runs, env=child_env, timeout=WAIT_S)
        assert job.wait(120) == 1, job.stderr
    finally:
        job.close()
    assert tagged(job_id) == [], "processes of the job outlived it"
    print(f"{remote.name}'s processes gone {gone:.2f} s after its agent was killed")

    err = job.stderr
    first, second = job.record()["attempts"]
    assert (first["state"], first["failure"]["host"]) == ("FAILED", remote.name)
    assert first["failure"]["kind"] == "lost", first["failure"]
    assert f"attempt 1 failed: rank 1 on {remote.name}: lost the connection to {remote.name}" in err, err
    assert f"swept {remote.name}: " in err and "restart 1 of 1" in err, err
    assert second["resume"].startswith(f"refinenet-1_{STEPS}.ckpt (epoch 1, global step {STEPS})"), second
    # the lost host got a new agent, and warm interpreters, before the restart: every rank started warm
    assert first["recovery"]["start"] == "warm", first["recovery"]

    saved = [metrics.events(f, "saved_on_request")[-1] for f in files]
    step = saved[0]["step"]
    assert [s["step"] for s in saved] == [step, step] and STEPS < step < EPOCHS * STEPS, saved
    epoch, in_epoch = saved[0]["epoch"], saved[0]["epoch_step"]
    name = f"refinenet-{epoch}_{in_epoch}.ckpt"
    assert all((folder / name).is_file() for folder in ckpt.values())
    named = f"the ranks saved {name} after global step {step} (epoch {epoch} step {in_epoch})"
    assert stop.returncode == 0 and f"job {job_id}: STOPPED (" in stop.stdout and named in stop.stdout, stop
    record = job.record()
    assert record["state"] == "STOPPED" and named in record["message"], record["message"]
    assert second["state"] == "STOPPED" and second["failure"] is None, second

    # 3. resume: from the saved step on, to the end; no global step computed twice.
    resumed_at = time.time()
    resume = cli("resume", job_id, "--runs-dir", runs, env=child_env, timeout=WAIT_S, cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr
    assert f"resuming from {name} (epoch {epoch}, " in resume.stderr, resume.stderr
    record = job.record()
    assert record["state"] == "SUCCEEDED" and len(record["attempts"]) == 3
    third = job.log().split("=== attempt 3 started", 1)[1]
    for rank, host in ((0, "local"), (1, remote.name)):
        starts = [line for line in third.splitlines() if line.startswith(f"[r{rank} {host}] training starts")]
        assert len(starts) == 1 and starts[0].endswith(
            f"{ckpt[host]}/{name} at epoch {epoch} step {in_epoch}, global step {step}"), starts
        lines = [line for line in third.splitlines() if line.startswith(f"[r{rank} ") and "loss is" in line]
        assert re.search(rf"epoch: {epoch} step: {in_epoch + 1}, loss is", lines[0]), lines[:2]
    for f in files:
        assert [r["step"] for r in metrics.steps(f, resumed_at)] == list(range(step + 1, EPOCHS * STEPS + 1))
        assert [r["step"] for r in metrics.steps(f, started)] == list(range(STEPS + 1, EPOCHS * STEPS + 1))
    for host, folder in ckpt.items():
        assert saved_epochs(folder)[-1] == EPOCHS, host

    # The result is that of an uninterrupted run, tensor for tensor.
    warm_job.wait_all(reference, timeout=WAIT_S)
    final = ckpt_reader.read_checkpoint(ckpt["local"] / FINAL)
    expected = ckpt_reader.read_checkpoint(tmp_path / "reference" / "ckpt" / FINAL)
    assert final.keys() == expected.keys()
    differ = [n for n, v in expected.items()
              if (final[n].dtype, final[n].tobytes()) != (v.dtype, v.tobytes())]
    assert differ == [], differ[:10]
