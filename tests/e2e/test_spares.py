"""A host that keeps failing is excluded and a spare takes its ranks, with the real training workload.

Three simulated SSH hosts, each its own sshd and working directory: a and b run the two ranks, c stands
by. b's `python` kills its training process as soon as the attempt has written its first checkpoint
there, every time. With `restart.exclude_after: 2`, b is the root cause twice, is excluded, and the
third attempt runs on a and c: the checkpoint it resumes from is copied from a to c through the
transports and verified on c. The job ends 0, its final checkpoint on c equals (bit for bit) the one
an uninterrupted run of the same job writes, and `status` shows b excluded with the reason. Restarts
start cold: a warm interpreter would run b's training without b's `python`.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest

from tests.harness.cli import cli
from tests.harness.clusters import TINY_R1, cluster_file, ssh_host
from tests.harness.hosts import SshServer, start_servers, stop_servers
from tests.harness.procs import tagged

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = TINY_R1["epochs"]

#: b's python: training is killed (exit 137) once this attempt wrote a checkpoint manifest on b.
DIES_AFTER_CHECKPOINT = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "refinenet.train" ]; then
  ckpt={ckpt}
  before=$(ls "$ckpt"/*.json 2>/dev/null | wc -l)
  {py} "$@" & pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ "$(ls "$ckpt"/*.json 2>/dev/null | wc -l)" -gt "$before" ]; then kill -9 $pid; exit 137; fi
    sleep 0.1
  done
  wait $pid
  exit $?
fi
exec {py} "$@"
"""


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory, ssh_client_key):
    servers = start_servers(tmp_path_factory.mktemp("spares"), ssh_client_key, 3, base="127.0.2.",
                            name="host-{}")
    try:
        yield servers
    finally:
        stop_servers(servers)


def cluster(path: Path, hosts, spares, out: str, data: Path) -> Path:
    return cluster_file(path, hosts, spares=spares, name="spares",
                        job={"data": str(data), "output_dir": out, "stage_overrides": {"r1": dict(TINY_R1)}},
                        restart={"max_restarts": 3, "backoff_s": 0.5, "backoff_max_s": 0.5,
                                 "exclude_after": 2, "warm_start": False},
                        health={"interval_s": 10})


def launch(cluster_path: Path, runs: Path, job_id: str, env: dict):
    return cli("--cluster", cluster_path, "--stage", "r1", "--runs-dir", runs, "--job-id", job_id, env=env,
               timeout=900)


def final_ckpt(server: SshServer, out: str) -> Path:
    return Path(server.workdir) / out / "r1" / "ckpt" / f"refinenet-{EPOCHS}_3.ckpt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failing_host_is_replaced_by_a_spare_with_its_checkpoint(tmp_path, three_hosts, train_list,
                                                                   child_env):
    a, b, c = three_hosts
    hosts = [ssh_host(s.host()) for s in three_hosts]
    runs = tmp_path / "runs"

    reference = cluster(tmp_path / "reference.yaml", hosts[:2], [], "out-reference", train_list)
    res = launch(reference, runs, "reference", child_env)
    assert res.returncode == 0, res.stderr
    expected = sha256(final_ckpt(b, "out-reference"))

    out = "out-spares"
    wrapper = tmp_path / "b-python"
    wrapper.write_text(DIES_AFTER_CHECKPOINT.format(
        py=shlex.quote(sys.executable), ckpt=shlex.quote(str(Path(b.workdir) / out / "r1" / "ckpt"))))
    wrapper.chmod(0o755)
    hosts[1]["python"] = str(wrapper)
    path = cluster(tmp_path / "spares.yaml", hosts[:2], hosts[2:], out, train_list)
    res = launch(path, runs, "with-spare", child_env)
    assert res.returncode == 0, res.stderr[-6000:]
    assert tagged("with-spare") == []

    record = json.loads((runs / "with-spare" / "job.json").read_text())
    states = [a_["state"] for a_ in record["attempts"]]
    assert states == ["FAILED", "FAILED", "SUCCEEDED"], res.stderr[-4000:]
    assert all(a_["failure"]["host"] == "host-2" and a_["failure"]["exit_code"] == 137
               for a_ in record["attempts"][:2])
    assert record["hosts"]["host-2"]["state"] == "excluded"
    assert "root cause of 2 failed attempts in a row" in record["hosts"]["host-2"]["reason"]
    assert record["hosts"]["host-2"]["replaced_by"] == "host-3"
    assert record["hosts"]["host-3"]["state"] == "active"
    assert "host host-2 excluded" in res.stderr and "its ranks move to spare host-3" in res.stderr
    assert "copied from host-1 to host-3" in res.stderr and "verified there" in res.stderr
    third = record["attempts"][2]
    assert {p["host"] for p in third["processes"] if p["name"].startswith("r")} == {"host-1", "host-3"}
    log = (runs / "with-spare" / "logs" / "job.log").read_text()
    assert "[launcher] host host-2 excluded" in log
    resumed = third["resume"].split(" ")[0]
    copied = Path(c.workdir) / out / "r1" / "ckpt" / resumed
    assert copied.exists() and copied.with_suffix(".json").exists()
    assert sha256(copied) == sha256(Path(a.workdir) / out / "r1" / "ckpt" / resumed)
    assert sha256(final_ckpt(c, out)) == expected

    status = cli("status", "with-spare", "--runs-dir", runs, env=child_env)
    assert "host-2 excluded: root cause of 2 failed attempts in a row" in status.stdout
    assert "(ranks moved to host-3)" in status.stdout
