"""The real 2-node Slurm cluster that slurm backend tests run on (tests/e2e/slurm.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from launcher.slurm.text import (
    expand_nodelist,
    parse_job_state,
    parse_node_addrs,
    parse_sbatch_job_id,
    parse_task_failures,
)
from tests.harness.hosts import SlurmCluster, SlurmMissing
from tests.harness.procs import alive, cmdline
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_two_nodes_with_their_own_hostnames_and_addresses(slurm_cluster):
    assert slurm_cluster.nodes == ["n1", "n2"] and slurm_cluster.partition == "debug"
    result = slurm_cluster.run("srun", "-N2", "-n2", "-l", "sh", "-c", "echo $(hostname) $SLURMD_NODENAME",
                               check=True)
    assert sorted(result.stdout.splitlines()) == ["0: n1 n1", "1: n2 n2"]
    shown = slurm_cluster.run("scontrol", "show", "node", "-o", check=True).stdout
    assert parse_node_addrs(shown) == {n: slurm_cluster.node_addr(n) for n in slurm_cluster.nodes}
    nodelists = slurm_cluster.run("srun", "-N2", "-n2", "printenv", "SLURM_JOB_NODELIST", check=True).stdout
    assert {tuple(expand_nodelist(line)) for line in nodelists.split()} == {("n1", "n2")}


def test_kill_on_bad_exit_hides_the_task_code_that_stderr_names(slurm_cluster):
    result = slurm_cluster.run("srun", "-N2", "-n4", "-K", "sh", "-c",
                               'if [ "$SLURM_PROCID" = 3 ]; then exit 3; fi; sleep 30', timeout=30)
    assert result.returncode == 143, result.stderr
    first = parse_task_failures(result.stderr)[0]
    assert (first.node, first.tasks, first.exit_code) == ("n2", (3,), 3)


def test_sbatch_job_completes_and_is_kept_for_scontrol(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun hostname\n")
    output = str(tmp_path / "out-%j.txt")
    submitted = slurm_cluster.run("sbatch", "-N2", "-o", output, str(script), check=True)
    job_id = parse_sbatch_job_id(submitted.stdout)

    def finished():
        state = parse_job_state(slurm_cluster.run("scontrol", "show", "job", "-o", str(job_id)).stdout)
        return state if state["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING") else None

    state = wait_until(finished, 15)
    assert (state["JobState"], state["ExitCode"], state["NodeList"], state["BatchHost"]) == (
        "COMPLETED", "0:0", "n[1-2]", "n1")
    assert sorted((tmp_path / f"out-{job_id}.txt").read_text().split()) == ["n1", "n2"]


def test_scancel_ends_a_running_step_on_every_node(slurm_cluster):
    srun = subprocess.Popen(["srun", "-N2", "-n4", "-J", "scancel-me", "sleep", "60"], env=slurm_cluster.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        job_id = wait_until(lambda: slurm_cluster.run("squeue", "-h", "-n", "scancel-me", "-t", "R",
                                                      "-o", "%i").stdout.strip(), 15)
        wait_until(lambda: len([p for p in slurm_cluster.pids() if "sleep" in cmdline(p)]) == 4, 15)
        slurm_cluster.run("scancel", job_id, check=True)
        srun.wait(10)
        wait_until(lambda: not [p for p in slurm_cluster.pids() if "sleep" in cmdline(p)], 10)
    finally:
        if srun.poll() is None:
            srun.kill()
        srun.wait()
        _, stderr = srun.communicate()
    assert srun.returncode != 0
    assert {f.node for f in parse_task_failures(stderr)} == {"n1", "n2"}


def test_stop_leaves_no_process_namespace_or_bridge(tmp_path):
    cluster = SlurmCluster(tmp_path / "slurm", bridge="rnbrstop", netns_prefix="rnslstop")
    with cluster:
        cluster.run("srun", "-N2", "true", check=True)
        busy = subprocess.Popen(["srun", "-N2", "-n2", "sleep", "60"], env=cluster.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: len([p for p in cluster.pids() if "sleep" in cmdline(p)]) == 2, 15)
        pids = cluster.pids()
        assert len(pids) >= 6
    busy.wait(10)
    assert [p for p in pids if alive(p)] == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "rnslstop" not in netns
    assert subprocess.run(["ip", "link", "show", "rnbrstop"], capture_output=True).returncode != 0
    assert not Path("/run/netns/rnslstop1").exists()


def test_missing_programs_are_named_with_the_setup_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmMissing, match=r"srun is not installed; run `make system`"):
        SlurmCluster(tmp_path / "slurm", bridge="rnbrmiss", netns_prefix="rnslmiss").start()
