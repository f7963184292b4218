"""Real training jobs through `refinenet-launch`: two CPU ranks via `dynamic`, `msrun` and `mpirun` on
this machine and via SSH to two sshd hosts; a rank failing at start; the job commands afterwards.

Every job is the real workload (ResNet-18 RefineNet, crop 33, one step of batch 2 per rank) on a
tiny synthetic dataset made once per session.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from launcher.cli import main
from refinenet import manifest as mf
from tests.harness import clusters
from tests.harness.cli import cli
from tests.harness.data import TRAIN_LIST as LIST
from tests.harness.data import copy_dataset
from tests.harness.procs import tagged

pytestmark = pytest.mark.e2e

#: One epoch of one step of batch 2 per rank.
R1 = {**clusters.TINY_R1, "batch-size": 2, "epochs": 1}
JOB_TIMEOUT_S = 420


def cluster_file(folder: Path, name: str, backend: str, hosts: List[dict], data: str,
                 output_dir: str) -> Path:
    return clusters.cluster_file(folder / f"{name}.yaml", hosts, name=name, backend=backend,
                                 job={"data": data, "output_dir": output_dir, "stage_overrides": {"r1": R1}})


def launch(cluster: Path, runs: Path, cwd: Path, env: Dict[str, str], *extra: str,
           timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    return cli("--cluster", cluster, "--stage", "r1", "--runs-dir", runs, *extra, env=env, cwd=cwd,
               timeout=timeout)


def explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-6000:]}"


def only_job(runs: Path) -> Path:
    jobs = [p for p in runs.iterdir() if (p / "job.json").is_file()]
    assert len(jobs) == 1, jobs
    return jobs[0]


def assert_checkpoint(output_dir: Path) -> None:
    """One complete checkpoint of epoch 1 (its manifest verified against the file)."""
    entries, skipped = mf.scan(output_dir / "r1" / "ckpt")
    assert skipped == [] and len(entries) == 1, (entries, skipped)
    assert entries[0].manifest.epoch == 1 and entries[0].manifest.stage == "r1"
    assert Path(entries[0].path).is_file() and mf.manifest_path(entries[0].path).is_file()


def assert_ran_two_ranks(res: subprocess.CompletedProcess, job: Path, hosts: Dict[int, str]) -> None:
    assert res.returncode == 0, explain(res)
    assert json.loads((job / "job.json").read_text())["state"] == "SUCCEEDED"
    for rank, host in hosts.items():
        log = (job / "logs" / f"rank_{rank}.log").read_text()
        assert "epoch: 1 step: 1, loss is" in log, log[-3000:]
        assert f"rank {rank} of 2" in log
        assert "<stdout>:" not in log and "<stderr>:" not in log
        assert any(line.startswith(f"[r{rank} {host}] epoch: 1 step: 1, loss is")
                   for line in res.stdout.splitlines()), res.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dynamic", "msrun", "mpirun"])
def test_two_cpu_ranks_train_through_each_backend(tmp_path, child_env, dataset, backend, capsys):
    cluster = cluster_file(tmp_path, f"two-{backend}", backend, [{"name": "local", "ranks": 2}],
                           str(dataset / LIST), "out")
    runs = tmp_path / "runs"
    res = launch(cluster, runs, tmp_path, child_env)
    job = only_job(runs)
    assert_ran_two_ranks(res, job, {0: "local", 1: "local"})
    assert_checkpoint(tmp_path / "out")
    if backend == "msrun":
        # Worker output reaches the ranks' logs only (msrun itself does not echo it).
        assert "loss is" not in (job / "logs" / "msrun-local.log").read_text()

    capsys.readouterr()
    assert main(["status", job.name, "--runs-dir", str(runs), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED" and status["job_id"] == job.name
    assert main(["logs", job.name, "--ranks", "1", "--runs-dir", str(runs)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert any(line.startswith("[r1 local] epoch: 1 step: 1") for line in lines)
    assert not any(line.startswith("[r0 ") for line in lines)
    assert main(["list", "--runs-dir", str(runs)]) == 0
    listing = capsys.readouterr().out
    assert job.name in listing and "SUCCEEDED" in listing


@pytest.mark.slow
def test_two_ssh_hosts_each_keep_their_own_checkpoint(tmp_path, child_env, dataset, ssh_hosts):
    """One rank per host; no shared filesystem: each workdir has its own data copy and gets its own
    checkpoint."""
    tag = uuid.uuid4().hex[:8]
    hosts = []
    for host in ssh_hosts:
        copy_dataset(dataset, Path(host.workdir) / f"data-{tag}")
        hosts.append(dict(host.spec_dict(), ranks=1))
    cluster = cluster_file(tmp_path, "two-ssh", "dynamic", hosts, f"data-{tag}/{LIST}", f"out-{tag}")
    runs = tmp_path / "runs"
    res = launch(cluster, runs, tmp_path, child_env)
    job = only_job(runs)
    assert_ran_two_ranks(res, job, {0: ssh_hosts[0].name, 1: ssh_hosts[1].name})
    for host in ssh_hosts:
        assert_checkpoint(Path(host.workdir) / f"out-{tag}")
    assert not (tmp_path / f"out-{tag}").exists()


@pytest.mark.parametrize("backend", ["dynamic", "msrun", "mpirun"])
def test_a_rank_failing_at_start_stops_the_job(tmp_path, child_env, dataset, backend):
    """A rank exits at once on bad data; the ranks waiting for the cluster and the scheduler are
    stopped well before the cluster timeout. dynamic and msrun: rank 1's host (its own workdir) has a
    list that names images that do not exist (the workload's input check runs on the first host only).
    mpirun runs one command line everywhere, so every rank gets the bad list: its images exist, so the
    input check passes, but they do not decode."""
    runs = tmp_path / "runs"
    bad_list = "missing/a.jpg missing/a.png\n"
    if backend == "mpirun":
        cluster = cluster_file(tmp_path, "bad-mpirun", backend, [{"name": "local", "ranks": 2}],
                               str(dataset / LIST), "out")
        corrupt = tmp_path / "corrupt"
        corrupt.mkdir()
        for name in ("a.jpg", "a.png"):
            (corrupt / name).write_bytes(b"not an image")
        (tmp_path / "bad.lst").write_text(f"{corrupt / 'a.jpg'} {corrupt / 'a.png'}\n" * 4)
        bad_rank, bad_host, missing = 0, "local", "cannot decode image"
        extra = ["--set", f"data={tmp_path / 'bad.lst'}"]
    else:
        for name in ("host-a", "host-b"):
            (tmp_path / name).mkdir()
        copy_dataset(dataset, tmp_path / "host-a" / "data")
        (tmp_path / "host-b" / "data").mkdir()
        (tmp_path / "host-b" / "data" / LIST).write_text(bad_list)
        hosts = [{"name": "host-a", "address": "127.0.0.1", "ranks": 1, "workdir": str(tmp_path / "host-a")},
                 {"name": "host-b", "address": "127.0.0.2", "ranks": 1, "workdir": str(tmp_path / "host-b")}]
        cluster = cluster_file(tmp_path, f"bad-{backend}", backend, hosts, f"data/{LIST}", "out")
        bad_rank, bad_host, missing, extra = 1, "host-b", "file not found", []
    started = time.monotonic()
    res = launch(cluster, runs, tmp_path, child_env, *extra, timeout=120)
    elapsed = time.monotonic() - started
    assert res.returncode == 1, explain(res)
    assert elapsed < 40, f"took {elapsed:.0f} s\n{explain(res)}"
    assert "root cause (attempt 1" in res.stderr, res.stderr
    assert f"rank {bad_rank} on {bad_host}" in res.stderr, res.stderr
    tail = res.stderr[res.stderr.index("last lines of its log:"):]
    assert missing in tail, res.stderr
    record = json.loads((only_job(runs) / "job.json").read_text())
    assert record["state"] == "FAILED" and record["attempts"][0]["failure"]["rank"] == bad_rank
    assert all(p["state"] in ("FAILED", "STOPPED", "SUCCEEDED") for p in record["attempts"][0]["processes"])
    assert not list(tmp_path.glob("**/r1/ckpt/*.ckpt"))
    left = tagged(record["job_id"])
    assert not left, f"processes of {record['job_id']} still running: {left}"


def test_msrun_entry_ends_msruns_scheduler_and_execs_the_workers(tmp_path, child_env):
    """msrun starts its task as a scheduler too; the rendered task ends that copy at once (the
    launcher runs the scheduler) and runs the workers' command unchanged."""
    from tests.harness.specs import plan_of, spec_of

    spec = spec_of(name="m", backend="msrun", hosts=[{"name": "local", "ranks": 2, "workdir": str(tmp_path)}],
                   port=8118, source="m.yaml")
    plan = plan_of(spec, "r1", job_dir=str(tmp_path / "job"), job_id="m1")
    (entry,) = plan.files
    Path(entry.path).parent.mkdir(parents=True)
    Path(entry.path).write_text(entry.content)
    argv = [sys.executable, entry.path, "echo", "worker", "$HOME"]
    sched = subprocess.run(argv, env=dict(child_env, MS_ROLE="MS_SCHED", MS_SCHED_PORT="8118"),
                           capture_output=True, text=True, timeout=60)
    assert sched.returncode == 0 and "msrun's scheduler is not used" in sched.stdout
    assert "worker" not in sched.stdout
    worker = subprocess.run(argv, env=dict(child_env, MS_ROLE="MS_WORKER"), capture_output=True, text=True,
                            timeout=60)
    assert (worker.returncode, worker.stdout) == (0, "worker $HOME\n")
