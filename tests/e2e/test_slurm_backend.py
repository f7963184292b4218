"""`backend: slurm` end to end on a real 2-node Slurm cluster (tests/e2e/slurm.py), real RefineNet ranks.

Inside an allocation (`salloc -N2 refinenet-launch ...`): r1 with one rank on each node, node-local output
folders (`workdir: .../{node}`), a rank SIGKILLed after the first checkpoint and the job restarted in the
same allocation from that checkpoint. Through `submit`: status and `logs --follow` until SUCCEEDED on
shared storage (one checkpoint writer), `stop` of a running and of a queued job, the time limit named when
it ends a job, SIGUSR1 to the batch script (as `--signal=B:USR1@S` sends it before the time limit) saving
and stopping the job and `resume` finishing it in a new allocation, and the inputs refused with exit 2
before anything is submitted or started. Also files,
commands and signals on a node through srun, and an Ascend rank table from hccn.conf read on each node.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.harness import metrics
from tests.harness.checkpoints import saved_epochs as saved
from tests.harness.cli import cli, launcher_argv
from tests.harness.clusters import TINY_R1, cluster_file
from tests.harness.environment import REPO
from tests.harness.launched import LaunchedJob
from tests.harness.procs import cmdline, tagged
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 3  # 6 training images, 2 ranks, batch 1
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture
def env(slurm_cluster, child_env) -> dict:
    return {**child_env, **slurm_cluster.env}


def slurm_cluster_file(tmp_path: Path, train_list: Path, epochs: int, storage: str = "local",
                       **slurm) -> Path:
    """Two nodes of the test cluster, one real r1 rank each, node-local folders unless `workdir` is given."""
    return cluster_file(
        tmp_path / "slurm-test.yaml", name="slurm-test", backend="slurm", storage=storage,
        slurm={"nodes": 2, "ranks_per_node": 1, "partition": "debug", "python": sys.executable,
               "workdir": str(tmp_path / "nodes" / "{node}"), **slurm},
        job={"data": str(train_list), "output_dir": "out",
             "stage_overrides": {"r1": {**TINY_R1, "epochs": epochs}}},
        restart={"max_restarts": 1}, health={"interval_s": 10})


def salloc(nodes: int) -> List[str]:
    """The command that runs another inside a `nodes`-node allocation (none for 0)."""
    return ["salloc", f"-N{nodes}"] if nodes else []


def record(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what: str, check, timeout: float = 300):
    return wait_until(check, timeout, 0.2, what)


def no_slurm_jobs(cluster) -> bool:
    return not cluster.run("squeue", "-h").stdout.strip()


def test_r1_in_an_allocation_restarts_in_it_after_kill9(tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=2)
    runs, job_id = tmp_path / "runs", "slurm-kill9"
    job_dir = runs / job_id
    job = LaunchedJob(cluster, runs, job_id, env, wrap=("salloc", "-N2", "-J", "kill9"))
    ckpt = {node: tmp_path / "nodes" / node / "out" / "r1" / "ckpt" for node in ("n1", "n2")}
    try:
        job.wait_for("the first checkpoint on both nodes", lambda: all(saved(d) for d in ckpt.values()), 300,
                     0.2)
        pid = next(p["pid"] for p in record(job_dir)["attempts"][0]["processes"] if p["name"] == "r1")
        os.kill(pid, signal.SIGKILL)
        assert job.wait(400) == 0, job.stderr
    finally:
        job.kill()
    assert tagged(job_id) == [], "processes of the job outlived it"
    stderr = job.stderr
    rec = record(job_dir)
    assert rec["state"] == "SUCCEEDED", stderr
    first, second = rec["attempts"]
    failure = first["failure"]
    assert (failure["rank"], failure["host"], failure["signal"]) == (1, "n2", 9), failure
    assert second["resume"].startswith(f"refinenet-1_{STEPS}.ckpt (epoch 1"), second["resume"]
    # one allocation for both attempts: the nodes and Slurm job id recorded once, steps of that job
    assert rec["slurm"]["nodes"] == ["n1", "n2"] and rec["slurm"]["job_id"]
    assert stderr.count("salloc: Granted job allocation") == 1
    log = (job_dir / "logs" / "job.log").read_text()
    for rank, node in ((0, "n1"), (1, "n2")):
        assert f"[r{rank} {node}] epoch: 2 step: 3, loss is" in log, log[-2000:]
    # node-local folders: each node kept its own copy of every checkpoint
    assert saved(ckpt["n1"]) == saved(ckpt["n2"]) == [1, 2]
    assert (job_dir / "logs" / "rank_1.log").is_file()


def test_submit_runs_to_succeeded_with_one_writer_on_shared_storage(tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=1, workdir=str(tmp_path / "shared"),
                                 storage="shared")
    runs = tmp_path / "runs"
    t0 = time.monotonic()
    out = cli("submit", "--cluster", str(cluster), "--stage", "r1", "--runs-dir", str(runs),
              "--job-id", "submitted", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 30, "submit waits for nothing but sbatch"
    assert "submitted: Slurm job " in out.stdout and "job submitted" in out.stdout
    job_dir = runs / "submitted"
    slurm_id = record(job_dir)["slurm"]["job_id"]
    follow = subprocess.Popen(launcher_argv("logs", "submitted", "--follow", "--runs-dir", runs), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()

    def final():
        shown = cli("status", "submitted", "--runs-dir", str(runs), env=env, cwd=tmp_path).stdout
        state = shown.split("state", 1)[1].split()[0].rstrip(",") if "state" in shown else ""
        seen.add(state)
        return shown if state in FINAL else None

    shown = wait_for("the submitted job to end", final, timeout=300)
    assert "state     SUCCEEDED" in shown, shown + (job_dir / "logs" / "job.log").read_text()
    assert f"slurm     job {slurm_id} (submitted, nodes n1,n2" in shown
    assert "RUNNING" in seen or "STARTING" in seen, seen
    followed, _ = follow.communicate(timeout=60)
    assert follow.returncode == 0 and "[r1 n2] epoch: 1 step: 3, loss is" in followed, followed[-2000:]
    assert "submitted  SUCCEEDED" in cli("list", "--runs-dir", str(runs), env=env, cwd=tmp_path).stdout
    log = (job_dir / "logs" / "job.log").read_text()
    assert "[r0 n1] saved checkpoint" in log and "[r1 n2] saved checkpoint" not in log, log[-2000:]
    assert saved(tmp_path / "shared" / "out" / "r1" / "ckpt") == [1]
    assert (job_dir / f"slurm-{slurm_id}.out").is_file()


def test_stop_of_a_running_and_of_a_queued_submitted_job(tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=50)
    runs = tmp_path / "runs"
    for job_id, extra in (("queued", ["--override", "slurm.sbatch_options=[--hold]"]), ("running", [])):
        out = cli("submit", "--cluster", str(cluster), "--stage", "r1", "--runs-dir",
                  str(runs), "--job-id", job_id, *extra, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    queued = cli("status", "queued", "--runs-dir", str(runs), env=env, cwd=tmp_path).stdout
    assert "state     PENDING" in queued and "PENDING (JobHeldUser)" in queued, queued
    log = runs / "running" / "logs" / "job.log"
    wait_for("rank steps", lambda: log.exists() and log.read_text().count("epoch: 1 step:") >= 2)
    for job_id in ("running", "queued"):
        t0 = time.monotonic()
        stopped = cli("stop", job_id, "--runs-dir", str(runs), env=env, cwd=tmp_path)
        assert stopped.returncode == 0 and f"job {job_id}: STOPPED" in stopped.stdout, stopped
        assert time.monotonic() - t0 < 20, (time.monotonic() - t0, stopped.stdout, stopped.stderr)
        assert record(runs / job_id)["state"] == "STOPPED"
    wait_for("Slurm to forget both jobs", lambda: no_slurm_jobs(slurm_cluster), 30)
    assert tagged("running") == [], "ranks outlived stop"
    marks = ("launcher.cli", "refinenet.train", "refinenet.scheduler", "refinenet-agent")
    assert not [p for p in slurm_cluster.pids() if any(m in cmdline(p) for m in marks)]


def test_the_time_limit_is_named_when_it_ends_the_job(tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=1, time_limit="1", save_before_s=0)
    runs = tmp_path / "runs"
    sleeper = [sys.executable, "-c", "import time; print('rank up', flush=True); time.sleep(600)"]
    out = cli("submit", "--cluster", str(cluster), "--runs-dir", str(runs), "--job-id",
              "limited", "--", *sleeper, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wait_for("the job to end", lambda: record(runs / "limited").get("state") in FINAL, timeout=200)
    rec = record(runs / "limited")
    assert rec["state"] == "FAILED", rec
    assert "the Slurm allocation's time limit (00:01:00) ended the job" in rec["message"], rec
    assert len(rec["attempts"]) == 1, "no restart once the allocation's time is up"
    assert "time limit" in cli("status", "limited", "--runs-dir", str(runs), env=env, cwd=tmp_path).stdout
    wait_for("Slurm to end the job", lambda: no_slurm_jobs(slurm_cluster), 60)
    assert tagged("limited") == []


def test_sigusr1_to_the_batch_script_saves_and_resume_finishes_in_a_new_allocation(
        tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=1)
    runs, job_id, steps = tmp_path / "runs", "usr1", 40
    program = [sys.executable, str(REPO / "docs" / "examples" / "train_any.py"), "--steps", str(steps),
               "--save-every", "10", "--step-s", "0.2"]
    out = cli("submit", "--cluster", str(cluster), "--runs-dir", str(runs), "--job-id", job_id, "--",
              *program, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    slurm_id = record(runs / job_id)["slurm"]["job_id"]
    files = [tmp_path / "nodes" / node / "out" / "command" / "metrics" / f"rank_{rank}.jsonl"
             for rank, node in enumerate(("n1", "n2"))]
    wait_for("step 12 on both nodes", lambda: all(metrics.steps(f)[-1:] and metrics.steps(f)[-1]["step"] >= 12
                                                  for f in files))
    # What Slurm does at `--signal=B:USR1@S` (submit asks for it, slurm.save_before_s), now.
    assert slurm_cluster.run("scancel", "--batch", "--signal=USR1", slurm_id).returncode == 0
    wait_for("the job to stop", lambda: record(runs / job_id).get("state") in FINAL, timeout=120)
    stopped = record(runs / job_id)
    assert stopped["state"] == "STOPPED", stopped["message"]
    assert "SIGUSR1 received (the Slurm allocation's time limit is near)" in stopped["message"]
    saved = [metrics.events(f, "saved_on_request") for f in files]
    assert all(len(events) == 1 for events in saved), saved
    step = saved[0][0]["step"]
    assert saved[1][0]["step"] == step and 12 <= step < steps, saved
    name = f"refinenet-{(step - 1) // 10 + 1}_{(step - 1) % 10 + 1}.ckpt"
    assert f"the ranks saved {name} after global step {step}" in stopped["message"], stopped["message"]
    wait_for("Slurm to end the job", lambda: no_slurm_jobs(slurm_cluster), 60)

    resumed = cli("resume", job_id, "--runs-dir", str(runs), env=env, cwd=tmp_path, timeout=300,
                  wrap=salloc(2))
    assert resumed.returncode == 0, resumed.stderr
    final = record(runs / job_id)
    assert final["state"] == "SUCCEEDED" and len(final["attempts"]) == 2, final["message"]
    assert final["slurm"]["job_id"] != slurm_id, final["slurm"]
    for f in files:  # every step computed once: up to the saved one, then from the next one on
        assert [r["step"] for r in metrics.steps(f)] == list(range(1, steps + 1)), f
    assert tagged(job_id) == []


def test_refused_before_anything_is_submitted_or_started(tmp_path, train_list, slurm_cluster, env):
    c = str(slurm_cluster_file(tmp_path, train_list, epochs=1))
    runs = tmp_path / "runs"
    cases = [
        ((0, "submit", "--override", "slurm.partition=nope"),
         "slurm.partition: partition 'nope' does not exist"),
        ((0, "submit", "--override", "slurm.nodes=3"), "slurm.nodes is 3 but partition debug has 2 node(s)"),
        ((1,), "slurm.nodes is 2 but Slurm allocation"),
        ((0,), "backend slurm runs inside a Slurm allocation"),
        ((0, "submit", "--override", "slurm.srun_options=-K"),
         "slurm.srun_options: expected a list of options"),
    ]
    for (nodes, *args), message in cases:
        out = cli(*args, "--cluster", c, "--stage", "r1", "--runs-dir", runs, env=env, cwd=tmp_path,
                  wrap=salloc(nodes))
        assert out.returncode == 2 and message in out.stderr, (args, out.returncode, out.stderr)
    assert not runs.exists() or not list(runs.iterdir())
    assert no_slurm_jobs(slurm_cluster)


def test_files_commands_and_signals_on_a_node_go_through_srun(tmp_path, slurm_cluster, env, monkeypatch):
    from launcher.slurm.allocation import Allocation, bind
    from launcher.spec.load import parse_cluster
    from launcher.transport.factory import open_transport

    spec = parse_cluster({"name": "t", "backend": "slurm", "device": "cpu",
                          "slurm": {"nodes": 1, "ranks_per_node": 1, "python": sys.executable}}, "t.yaml")
    subprocess.run(["salloc", "-N1", "-w", "n2", "--no-shell", "-J", "files"], env=env, capture_output=True,
                   timeout=30)
    job = wait_for("the allocation", lambda: slurm_cluster.run("squeue", "-h", "-n", "files", "-t", "R", "-o",
                                                               "%i").stdout.strip())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        host = bind(spec, Allocation(job, ("n2",), {"n2": slurm_cluster.node_addr("n2")})).hosts[0]
        with open_transport(host) as transport:
            target = tmp_path / "node" / "f.bin"
            transport.write_chunks(str(target), [b"a" * 70000, b"b"], mode=0o600)
            assert transport.read_file(str(target)) == b"a" * 70000 + b"b"
            assert oct(target.stat().st_mode & 0o777) == "0o600"
            assert b"".join(transport.read_chunks(str(target), chunk=4096)) == target.read_bytes()
            with pytest.raises(FileNotFoundError):
                transport.read_file(str(tmp_path / "missing"))
            result = transport.exec(["sh", "-c", "hostname; echo err >&2; exit 3"], env={"X": "1"})
            assert (result.returncode, result.stdout, result.stderr) == (3, "n2\n", "err\n")
            sleeper = subprocess.Popen(["sleep", "60"], env={**env, "REFINENET_JOB_ID": "sig"},
                                       start_new_session=True)
            pgid = sleeper.pid
            wait_for("the sleeper", lambda: sleeper.pid in tagged("sig"), 10)
            assert not transport.kill_group(pgid, signal.SIGTERM, verify_env=("REFINENET_JOB_ID", "other"))
            assert transport.kill_group(pgid, signal.SIGTERM, verify_env=("REFINENET_JOB_ID", "sig"))
            sleeper.wait(10)
    finally:
        slurm_cluster.run("scancel", job)


def test_ascend_rank_table_from_hccn_conf_read_on_each_node(tmp_path, train_list, slurm_cluster, env):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.100.101\nnetmask_0=255.255.255.0\n"
                    "address_1=192.168.101.101\nnetmask_1=255.255.255.0\n")
    path = cluster_file(tmp_path / "ascend.yaml", name="a", backend="slurm", device="ascend",
                        slurm={"nodes": 2, "devices": [0, 1], "hccn_conf": str(conf),
                               "python": sys.executable, "workdir": str(tmp_path)},
                        job={"data": str(train_list)})
    args = ("--cluster", str(path), "--stage", "r1", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    out = cli(*args, "--job-id", "a", env=env, cwd=tmp_path, wrap=salloc(2))
    assert out.returncode == 0, out.stderr
    table = json.loads((tmp_path / "runs" / "a" / "rank_table.json").read_text())
    addresses = [slurm_cluster.node_addr(n) for n in ("n1", "n2")]
    assert [s["server_id"] for s in table["server_list"]] == addresses
    ips = [d["device_ip"] for d in table["server_list"][1]["device"]]
    assert ips == ["192.168.100.101", "192.168.101.101"]
    conf.unlink()
    out = cli(*args, env=env, cwd=tmp_path, wrap=salloc(2))
    assert out.returncode == 2 and "slurm.hccn_conf: cannot read" in out.stderr, out.stderr


def test_dry_run_in_an_allocation_prints_the_srun_lines(tmp_path, train_list, slurm_cluster, env):
    cluster = slurm_cluster_file(tmp_path, train_list, epochs=1, srun_options=["--mem=0"])
    out = cli("--cluster", str(cluster), "--stage", "r1", "--dry-run", "--runs-dir",
              str(tmp_path / "runs"), env=env, cwd=tmp_path, wrap=salloc(2))
    assert out.returncode == 0, out.stderr
    for node in ("n1", "n2"):
        assert f"[{node}] {slurm_cluster.node_addr(node)} (Slurm node)" in out.stdout
        line = next(x for x in out.stdout.splitlines() if f"--nodelist={node}" in x)
        assert "host agent started as a Slurm step: srun --jobid=" in line and "--overlap" in line
        assert "--mem=0" in line and "--whole" in line
    assert f"master {slurm_cluster.node_addr('n1')}:" in out.stdout
