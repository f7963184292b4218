"""A host that cannot run the job fails the host check: exit 2, the host and cause named, and nothing
started or written on any host (real sshd hosts, real CLI)."""
from __future__ import annotations

import uuid
from pathlib import Path

import psutil
import pytest

from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, ssh_host
from tests.harness.hosts import free_port

pytestmark = pytest.mark.e2e


def unreachable(host: dict, tmp_path: Path) -> dict:
    return dict(host, ssh=dict(host["ssh"], port=free_port(host["address"]), connect_timeout_s=3))


def unknown_host_key(host: dict, tmp_path: Path) -> dict:
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    return dict(host, ssh=dict(host["ssh"], known_hosts=str(empty)))


def missing_python(host: dict, tmp_path: Path) -> dict:
    return dict(host, python="/nonexistent/bin/python3")


def missing_data(host: dict, tmp_path: Path) -> dict:
    """A host whose working directory lacks the stage's input file."""
    workdir = tmp_path / "workdir-without-data"
    workdir.mkdir()
    return dict(host, workdir=str(workdir))


@pytest.mark.parametrize("break_host, cause", [
    (unreachable, "refused"),
    (unknown_host_key, "host key"),
    (missing_python, "/nonexistent/bin/python3"),
    (missing_data, "input file(s) missing there: "),
], ids=["unreachable", "unknown-host-key", "missing-python", "missing-data"])
def test_a_bad_host_fails_the_host_check_and_nothing_starts(tmp_path, child_env, ssh_hosts, break_host,
                                                            cause):
    good, bad = (ssh_host(h) for h in ssh_hosts)
    for host in (good, bad):  # inputs the workload's own check on the first host accepts (it reads no image)
        workdir = Path(host["workdir"])
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        (workdir / "data" / "train.txt").write_text("a.jpg a.png\n" * 2)
        for image in ("a.jpg", "a.png"):
            (workdir / image).touch()
    bad = break_host(bad, tmp_path)
    name = f"badhost-{uuid.uuid4().hex[:8]}"
    cluster = cluster_file(tmp_path / "cluster.yaml", [good, bad], name=name,
                           job={"data": "data/train.txt", "output_dir": f"out-{name}",
                                "stage_overrides": {"r1": {"batch-size": 1}}})
    runs = tmp_path / "runs"
    res = cli("--cluster", cluster, "--stage", "r1", "--runs-dir", runs, cwd=tmp_path, env=child_env,
              timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "host check failed, nothing was started" in res.stderr
    problems = [line for line in res.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and problems[0].lstrip().startswith(f"{bad['name']} ({bad['address']})"), \
        res.stderr
    assert cause in problems[0], res.stderr
    if break_host is missing_data:
        assert problems[0].endswith(f"{bad['workdir']}/data/train.txt"), res.stderr
    assert res.stdout == ""
    assert not runs.exists() or not any(runs.iterdir())
    for host in ssh_hosts:
        workdir = Path(host.workdir)
        assert not list(workdir.glob(f".refinenet/jobs/{name}-*")) and not (workdir / f"out-{name}").exists()
    assert not [p for p in psutil.process_iter(["environ"])
                if (p.info["environ"] or {}).get("REFINENET_JOB_ID", "").startswith(name)]
