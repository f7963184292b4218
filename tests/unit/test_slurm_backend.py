"""`backend: slurm` without a cluster: the cluster file section, binding an allocation, the batch script."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from launcher.commands import submit
from launcher.errors import BadInput, ClusterFileError
from launcher.planning.request import LaunchRequest
from launcher.render.quoting import template
from launcher.slurm.allocation import Allocation, bind, current_allocation, ending, time_is_up
from launcher.slurm.transport import SlurmTransport
from launcher.spec.load import parse_cluster
from launcher.transport.factory import open_transport


def data(**slurm):
    return {
        "name": "s",
        "backend": "slurm",
        "device": "cpu",
        "slurm": {
            "nodes": 2,
            "ranks_per_node": 2,
            "workdir": "/scratch/{node}",
            "python": "/venv/bin/python",
            **slurm,
        },
    }


def test_slurm_section_gives_placeholder_hosts_and_the_rank_backend():
    spec = parse_cluster(
        {
            **data(partition="debug", time_limit="1-02:00:00", sbatch_options=["--exclusive"]),
            "storage": "shared",
        },
        "f.yaml",
    )
    assert spec.backend == "dynamic" and spec.storage == "shared" and spec.world_size == 4
    assert [h.name for h in spec.hosts] == ["node1", "node2"] and not spec.hosts[0].is_local
    assert spec.hosts[1].workdir == "/scratch/node2" and spec.slurm.sbatch_options == ("--exclusive",)
    ascend = parse_cluster(
        {"name": "a", "backend": "slurm", "device": "ascend", "slurm": {"nodes": 1, "devices": [0, 1]}},
        "f.yaml",
    )
    assert ascend.backend == "rank_table" and ascend.hosts[0].devices == (0, 1)


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"hosts": [{"name": "a", "ranks": 1}]}, "hosts", "not with backend slurm"),
        ({"spares": [{"name": "a", "ranks": 1}]}, "spares", "not with backend slurm"),
        ({"master": {"host": "a"}}, "master.host", "first node of the allocation"),
        ({"slurm": {"ranks_per_node": 1}}, "slurm.nodes", "required"),
        ({"slurm": {"nodes": 2}}, "slurm.ranks_per_node", "required for device cpu"),
        ({"slurm": {"nodes": 2, "devices": [0]}}, "slurm.devices", "no device ids"),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "srun_options": "--mpi=none -K"}},
            "slurm.srun_options",
            "one argument per item",
        ),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "sbatch_options": ["exclusive"]}},
            "slurm.sbatch_options[0]",
            "is not an option",
        ),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "time_limit": "soon"}},
            "slurm.time_limit",
            "time limit",
        ),
        ({"slurm": {"nodes": 2, "ranks_per_node": 1, "workdir": "/x/{host}"}}, "slurm.workdir", "{node}"),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "time_limit": "5"}},
            "slurm.save_before_s",
            "300 s (its default) is not less than slurm.time_limit 5 (300 s)",
        ),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "time_limit": "0:01:30", "save_before_s": 120}},
            "slurm.save_before_s",
            "120 s is not less than slurm.time_limit 0:01:30 (90 s)",
        ),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "ranks_with": "rank_table"}},
            "slurm.ranks_with",
            "ascend",
        ),
        (
            {"slurm": {"nodes": 2, "ranks_per_node": 1, "partition": "a b"}},
            "slurm.partition",
            "partition name",
        ),
        ({"storage": "nfs"}, "storage", "local, shared"),
    ],
)
def test_bad_slurm_sections_name_the_field(change, field, words):
    with pytest.raises(ClusterFileError) as err:
        parse_cluster({**data(), **change}, "f.yaml")
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_a_slurm_section_without_backend_slurm_is_refused():
    with pytest.raises(ClusterFileError) as err:
        parse_cluster(
            {
                "name": "s",
                "backend": "dynamic",
                "device": "cpu",
                "hosts": [{"name": "a", "ranks": 1}],
                "slurm": {"nodes": 1},
            },
            "f.yaml",
        )
    assert err.value.field == "slurm"


def allocation(*nodes: str, **addrs: str) -> Allocation:
    return Allocation("77", nodes, {n: addrs.get(n, f"10.0.0.{i + 1}") for i, n in enumerate(nodes)})


def test_bind_takes_the_first_nodes_and_the_lowest_address_as_master():
    spec = parse_cluster({**data(srun_options=["--mpi=none"]), "master": {"port": 9000}}, "f.yaml")
    bound = bind(spec, allocation("b", "a", "c", b="10.0.0.9", a="10.0.0.10"))
    assert [h.name for h in bound.hosts] == ["b", "a"] and bound.hosts[1].workdir == "/scratch/a"
    assert (bound.master.host, bound.master.addr, bound.master.port) == ("a", "10.0.0.10", 9000)
    assert bound.hosts[0].srun[:2] == ("srun", "--jobid=77") and "--nodelist=b" in bound.hosts[0].srun
    assert bound.hosts[0].srun[-1] == "--mpi=none"
    transport = open_transport(bound.hosts[0])
    assert isinstance(transport, SlurmTransport)
    assert transport.step_argv(["x"], agent=True)[-3:] == ["--whole", "--cpu-bind=none", "x"]


def test_bind_refuses_an_allocation_too_small_naming_both_sides():
    spec = parse_cluster(data(nodes=3), "f.yaml")
    with pytest.raises(
        BadInput, match=r"slurm.nodes is 3 but Slurm allocation 77 has 2 node\(s\) \(n1, n2\)"
    ):
        bind(spec, allocation("n1", "n2"))


def fake_run(node_text: str, job_text: str = ""):
    def run(argv):
        text = node_text if argv[2] == "node" else job_text
        return subprocess.CompletedProcess(argv, 0, text, "")

    return run


def test_current_allocation_reads_the_environment_and_node_addresses():
    assert current_allocation({}, fake_run("")) is None
    nodes = "NodeName=n1 Arch=x86_64 NodeAddr=10.1.0.5 NodeHostName=n1\nNodeName=n2 NodeAddr=localhost\n"
    job = "JobId=5 JobState=RUNNING TimeLimit=00:10:00 EndTime=2026-11-30T03:10:00 NodeList=n[1-2]\n"
    found = current_allocation({"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-2]"}, fake_run(nodes, job))
    assert found == Allocation(
        "5", ("n1", "n2"), {"n1": "10.1.0.5", "n2": "127.0.0.1"}, "00:10:00", "2026-11-30T03:10:00"
    )
    with pytest.raises(BadInput, match="does not resolve to an IP address"):
        current_allocation(
            {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1"},
            fake_run("NodeName=n1 NodeAddr=no-such-host.invalid\n"),
        )


def test_time_limit_and_ending():
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))
    assert not time_is_up(stamp) and time_is_up(stamp, now=time.time() + 58) and not time_is_up("Unknown")
    running = Allocation("5", ("n1",), {"n1": "10.0.0.1"}, "00:01:00", stamp)
    assert ending(running, fake_run("", "JobId=5 JobState=RUNNING Reason=None")) == ""
    assert "time limit (00:01:00)" in ending(
        running, fake_run("", "JobId=5 JobState=TIMEOUT Reason=TimeLimit")
    )
    assert "is ending (CANCELLED" in ending(running, fake_run("", "JobId=5 JobState=CANCELLED Reason=None"))
    past = Allocation("5", ("n1",), {}, "00:01:00", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()))
    assert "time limit" in ending(past, fake_run("", ""))


def test_the_batch_script_and_sbatch_line_quote_every_value(tmp_path):
    spec = parse_cluster(
        data(partition="debug", time_limit="30", account="proj", sbatch_options=["--qos=low"]), "f.yaml"
    )
    job_dir = tmp_path / "runs" / "j1"
    command = submit.sbatch_argv(spec, "j1", job_dir, job_dir / "sbatch.sh")
    assert command[:5] == [
        "sbatch",
        "--parsable",
        "--job-name=refinenet-j1",
        "--nodes=2",
        "--ntasks-per-node=1",
    ]
    assert {"--partition=debug", "--time=30", "--account=proj"} <= set(command)
    assert command[-2:] == ["--qos=low", str(job_dir / "sbatch.sh")]
    nasty = "a b'$(touch /tmp/owned)"
    request = LaunchRequest(cluster=str(tmp_path / "c.yaml"), stages=("r1",), settings=(f"data={nasty}",),
                            max_restarts=1, show_framework_logs=True)
    argv = request.to_argv("/venv/bin/python", job_dir)
    script = template("sbatch.sh.j2").render(job_id="j1", cwd=str(tmp_path / "w d"), argv=argv)
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    assert shlex.split(exec_line)[1:] == argv and "--show-framework-logs" in argv
    assert f"cd {shlex.quote(str(tmp_path / 'w d'))} || exit 2" in script
    assert Path("/tmp/owned").exists() is False


def test_health_of_a_slurm_cluster_file_outside_an_allocation_says_how(tmp_path, monkeypatch):
    from launcher.commands import health

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbackend: slurm\ndevice: cpu\nslurm: {nodes: 2, ranks_per_node: 1}\n")
    with pytest.raises(BadInput, match="salloc -N 2 refinenet-launch health"):
        health.run(health.build_parser("health").parse_args(["--cluster", str(path)]))
