"""The workload seam: what each workload runs, where its outputs go, how resume points come back."""
from __future__ import annotations

import sys

import pytest

from launcher.errors import BadInput
from launcher.spec.load import parse_cluster
from launcher.workload import CommandWorkload, RefineNetWorkload, workload_for
from launcher.workload.base import parse_progress
from tests.harness.specs import plan_of, spec_of


def spec(**job):
    """One host `a` (two ranks in /w), master port 8118, train and val lists and `job`'s other fields."""
    return spec_of(hosts=[{"name": "a", "ranks": 2, "workdir": "/w", "python": "/v/python"}], port=8118,
                   job={"data": "d.txt", "val_data": "v.txt", **job})


def test_a_command_runs_as_every_rank_with_the_resume_point_by_env_and_placeholder():
    s = spec()
    w = CommandWorkload(["python", "train.py", "--resume", "{resume}", "--tag=x{resume}"])
    host = s.hosts[0]
    assert w.argv(s, host) == ["python", "train.py", "--tag=x"]
    assert w.argv(s, host, "/c/refinenet-1_10.ckpt") == [
        "python", "train.py", "--resume", "/c/refinenet-1_10.ckpt", "--tag=x/c/refinenet-1_10.ckpt"]
    assert w.env(s, host, "/c/k.ckpt") == {"REFINENET_OUTPUT_DIR": "/w/output/command",
                                           "REFINENET_CKPT_DIR": "/w/output/command/ckpt",
                                           "REFINENET_RESUME": "/c/k.ckpt"}
    assert "REFINENET_RESUME" not in w.env(s, host)
    assert w.resumable and not w.single_process and w.checkpoint_dir(s, host) == "/w/output/command/ckpt"
    plan = plan_of(s, w, resume="/c/k.ckpt")
    ranks = [p for p in plan.processes if p.role == "rank"]
    assert [p.command for p in ranks] == ["exec python train.py --resume /c/k.ckpt --tag=x/c/k.ckpt"] * 2
    assert all(p.env["REFINENET_RESUME"] == "/c/k.ckpt" and p.env["MS_ROLE"] == "MS_WORKER" for p in ranks)
    assert plan.stage == "command"


def test_refinenet_stages_keep_their_commands_and_one_output_rule():
    s = spec(stage_overrides={"r2": {"output-dir": "elsewhere/r2"}})
    host = s.hosts[0]
    r1, r2, ev = (RefineNetWorkload(x) for x in ("r1", "r2", "eval"))
    assert r1.argv(s, host)[:5] == ["/v/python", "-m", "refinenet.train", "--stage", "r1"]
    assert r2.output_dir(s, host) == "/w/elsewhere/r2" and r1.output_dir(s, host) == "/w/output/r1"
    assert "latest:/w/elsewhere/r2/ckpt" in ev.argv(s, host)
    assert r1.metrics_file(s, host, 1) == "/w/output/r1/metrics/rank_1.jsonl"
    assert ev.metrics_file(s, host, 0) is None
    assert r1.data_files(s, host) == ["/w/d.txt"] and ev.single_process and not ev.resumable
    assert isinstance(workload_for("r1"), RefineNetWorkload)
    assert isinstance(workload_for("r1", []), RefineNetWorkload)


def test_progress_lines_are_the_contracts():
    assert parse_progress("epoch: 2 step: 5, loss is 0.25") == {"epoch": 2, "epoch_step": 5, "loss": 0.25}
    assert parse_progress("loss: 0.25") is None


def test_stage_and_command_are_exclusive():
    from launcher.commands.launch import build_parser
    from launcher.planning.request import LaunchRequest
    from launcher.workload import workloads_for

    def request(*argv):
        return LaunchRequest.from_args(build_parser("t").parse_args(["--cluster", "c", *argv]))

    command = request("--", "python", "x.py")
    assert isinstance(workloads_for(command.stages, command.command)[0], CommandWorkload)
    for bad in ((), ("--stage", "r1", "--", "x"), ("x.py",), ("--set", "a=1", "--", "x"),
                ("--stage", "r1,r2", "--set", "a=1")):
        with pytest.raises(BadInput):
            request(*bad)


def test_the_stages_a_cluster_file_overrides_are_the_workloads_to_check():
    from launcher.errors import ClusterFileError
    from launcher.workload import RefineNetWorkload

    spec = parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu",
                          "hosts": [{"name": "a", "ranks": 1}], "job": {"stage_overrides": {"r3": {}}}},
                         "t.yaml")
    with pytest.raises(ClusterFileError, match="job.stage_overrides.r3: unknown stage"):
        RefineNetWorkload("r1").check_spec(spec)


def test_the_job_record_keeps_the_cluster_file_with_its_overrides(tmp_path):
    from launcher.planning.request import LaunchRequest
    from launcher.runner import _spec_data
    from launcher.spec.load import load_cluster, parse_cluster

    path = tmp_path / "c.yaml"
    path.write_text("name: c\nbackend: dynamic\ndevice: cpu\nhosts:\n  - {name: a, ranks: 2, workdir: /w}\n")
    request = LaunchRequest(cluster=str(path), stages=("r1",),
                            overrides=("hosts[0].workdir=/elsewhere", "master.port=9000"))
    data = _spec_data(load_cluster(path), request)
    rebuilt = parse_cluster(data, "job.json (spec)")
    assert rebuilt.hosts[0].workdir == "/elsewhere" and rebuilt.master.port == 9000


def test_a_free_port_is_asked_of_the_master_host():
    from launcher.transport.local import LocalTransport
    from launcher.transport.probe import free_port_on

    port = free_port_on(LocalTransport("m"), sys.executable)
    assert 1024 <= port <= 65535
