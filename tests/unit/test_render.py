"""Rendering: rank tables, msrun/mpirun commands, per-rank environment, stage commands, plan.json."""
import json
import shlex
from functools import partial
from pathlib import Path

import jinja2
import pytest

import launcher.backends.mpirun as mpirun
import launcher.render.quoting as quoting
from launcher.errors import BadInput, ClusterFileError
from launcher.placement import place
from launcher.render.artifacts import render_hostfile, render_rank_table
from launcher.render.orchestrate import render_plan
from launcher.spec.load import with_stage_options
from tests.harness import specs
from tests.harness.specs import factory_of

REFERENCE_TABLE = Path(__file__).resolve().parents[1] / "fixtures" / "modelzoo" / "hccl_tools_8p_example.json"
ATLAS_IPS = ["192.168.100.101", "192.168.101.101", "192.168.102.101", "192.168.103.101",
             "192.168.100.100", "192.168.101.100", "192.168.102.100", "192.168.103.100"]


LOCAL = {"name": "local", "ranks": 2, "workdir": "/w", "python": "/venv/bin/python"}
#: One local host with two ranks, master port 8118, train and val lists: overridden where a test says.
spec_of = partial(specs.spec_of, hosts=[LOCAL], port=8118, source="c.yaml",
                  job={"data": "d.lst", "val_data": "v.lst", "output_dir": "out"})
plan_of = partial(specs.plan_of, job_id="j1")


def hccl_tools_layout(servers):
    """What hccl_tools.py/merge_hccl.py write: json.dump(indent=4), every value a string."""
    rank, server_list = 0, []
    for server_id, ips in servers:
        devices = []
        for dev, ip in enumerate(ips):
            devices.append({"device_id": str(dev), "device_ip": ip, "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server_id, "device": devices, "host_nic_ip": "reserve"})
    return json.dumps({"version": "1.0", "server_count": str(len(servers)), "server_list": server_list,
                       "status": "completed"}, indent=4)


def test_rank_table_8p_equals_hccl_tools_output():
    spec = spec_of(backend="rank_table", device="ascend",
                   hosts=[{"address": "127.0.0.1", "devices": list(range(8)), "device_ips": ATLAS_IPS}])
    table = render_rank_table(spec, place(spec))
    assert table == hccl_tools_layout([("127.0.0.1", ATLAS_IPS)])
    if REFERENCE_TABLE.exists():
        assert table == REFERENCE_TABLE.read_text()


def test_rank_table_of_two_servers_is_merged_with_global_rank_ids():
    ips_a = [f"10.1.{d}.1" for d in range(8)]
    ips_b = [f"10.1.{d}.2" for d in range(8)]
    spec = spec_of(backend="rank_table", device="ascend", hosts=[
        {"name": "b", "address": "192.168.1.12", "devices": list(range(8)), "device_ips": ips_b},
        {"name": "a", "address": "192.168.1.11", "devices": list(range(8)), "device_ips": ips_a}])
    table = render_rank_table(spec, place(spec))
    assert table == hccl_tools_layout([("192.168.1.11", ips_a), ("192.168.1.12", ips_b)])
    assert json.loads(table)["server_list"][1]["device"][0]["rank_id"] == "8"


def test_rank_table_backend_processes_and_env():
    spec = spec_of(backend="rank_table", device="ascend", hosts=[
        {"name": "a", "address": "10.0.0.1", "devices": [4, 5], "device_ips": ["1.1.1.4", "1.1.1.5"],
         "workdir": "/wa", "ssh": {"user": "u"}},
        {"name": "b", "address": "10.0.0.2", "devices": [0], "device_ips": ["1.1.2.0"], "workdir": "/wb",
         "ssh": {"user": "u"}}], timeouts={"cluster_s": 90, "heartbeat_s": 20})
    plan = plan_of(spec)
    assert [(p.name, p.host, p.role, p.ranks) for p in plan.processes] == [
        ("r0", "a", "rank", (0,)), ("r1", "a", "rank", (1,)), ("r2", "b", "rank", (2,))]
    assert [(f.host, f.path) for f in plan.files] == [("a", "/wa/.refinenet/jobs/j1/rank_table.json"),
                                                      ("b", "/wb/.refinenet/jobs/j1/rank_table.json")]
    env = plan.processes[1].env
    assert {k: env[k] for k in ("RANK_TABLE_FILE", "RANK_ID", "DEVICE_ID", "RANK_SIZE", "LOCAL_RANK",
                                "REFINENET_JOB_ID", "MS_TOPO_TIMEOUT", "MS_NODE_TIMEOUT")} == {
        "RANK_TABLE_FILE": "/wa/.refinenet/jobs/j1/rank_table.json", "RANK_ID": "1", "DEVICE_ID": "5",
        "RANK_SIZE": "3", "LOCAL_RANK": "1", "REFINENET_JOB_ID": "j1", "MS_TOPO_TIMEOUT": "90",
        "MS_NODE_TIMEOUT": "20"}
    assert "ONEDNN_MAX_CPU_ISA" not in env and plan.processes[2].cwd == "/wb"
    assert "export DEVICE_ID=5" in plan.env_files["rank_1.env"]


def test_dynamic_backend_has_a_scheduler_and_per_rank_env():
    plan = plan_of(spec_of(env={"EXTRA": "x y"}, timeouts={"cluster_s": 60, "heartbeat_s": 10}))
    sched, r0, r1 = plan.processes
    assert (sched.role, sched.ranks, sched.log_name) == ("scheduler", (), "scheduler.log")
    assert shlex.split(sched.command) == ["exec", "/venv/bin/python", "-m", "refinenet.scheduler"]
    assert sched.env["MS_ROLE"] == "MS_SCHED" and sched.env["MS_WORKER_NUM"] == "2"
    want = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118",
            "MS_WORKER_NUM": "2", "MS_NODE_ID": "1", "LOCAL_RANK": "1", "REFINENET_JOB_ID": "j1",
            "MS_TOPO_TIMEOUT": "60", "MS_NODE_TIMEOUT": "10", "ONEDNN_MAX_CPU_ISA": "AVX2", "EXTRA": "x y"}
    assert {k: r1.env[k] for k in want} == want and r0.env["MS_NODE_ID"] == "0"
    assert set(plan.env_files) == {"scheduler.env", "rank_0.env", "rank_1.env"}


def test_cluster_env_overrides_the_cpu_isa_default():
    plan = plan_of(spec_of(env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}))
    assert {p.env["ONEDNN_MAX_CPU_ISA"] for p in plan.processes} == {"AVX512_CORE"}


def test_msrun_command_per_host():
    hosts = [{"name": n, "address": a, "devices": list(range(8)), "ssh": {"user": "u"}, "workdir": "/w",
              "python": "/opt/venv/bin/python", "device_ips": [f"9.{i}.{d}.1" for d in range(8)]}
             for i, (n, a) in enumerate([("a", "10.0.0.1"), ("b", "10.0.0.2")])]
    plan = plan_of(spec_of(backend="msrun", device="ascend", hosts=hosts, timeouts={"cluster_s": 300}))
    assert [(p.name, p.role, p.ranks) for p in plan.processes] == [
        ("scheduler", "scheduler", ()), ("msrun-a", "msrun", tuple(range(8))),
        ("msrun-b", "msrun", tuple(range(8, 16)))]
    argv = shlex.split(plan.processes[2].command)
    assert argv[:3] == ["export", "PATH=/opt/venv/bin:$PATH", "&&"]
    assert argv[3:7] == ["exec", "/opt/venv/bin/python", "-m", "mindspore.parallel.cluster.run"]
    opts = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert opts == {"--worker_num": "16", "--local_worker_num": "8", "--master_addr": "10.0.0.1",
                    "--master_port": "8118", "--node_rank": "1",
                    "--log_dir": "/w/.refinenet/jobs/j1/attempt_0/msrun_log", "--join": "True",
                    "--tail_worker_log": "16",
                    "--cluster_time_out": "300",
                    "--rank_table_file": "/w/.refinenet/jobs/j1/rank_table.json"}
    task = argv.index("/w/.refinenet/jobs/j1/msrun_entry.py") + 1
    assert argv[task:task + 5] == ["/opt/venv/bin/python", "-m", "refinenet.train", "--stage", "r1"]
    gpu_hosts = [dict(h, device_ips=None) for h in hosts]
    for h in gpu_hosts:
        del h["device_ips"]
    gpu = plan_of(spec_of(backend="msrun", device="gpu", hosts=gpu_hosts))
    assert "--rank_table_file" not in gpu.processes[1].command
    assert [f.local_name for f in gpu.files] == ["msrun_entry.py", "msrun_entry.py"]
    assert gpu.processes[1].env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


@pytest.mark.parametrize("euid, flag", [(0, True), (1000, False)])
def test_mpirun_command_hostfile_and_scheduler(monkeypatch, euid, flag):
    monkeypatch.setattr(mpirun.os, "geteuid", lambda: euid)
    hosts = [{"name": "n1", "address": "10.0.0.1", "ranks": 3, "workdir": "/w", "python": "/v/python"},
             {"name": "n2", "address": "10.0.0.2", "ranks": 1, "workdir": "/w", "python": "/v/python",
              "ssh": {"user": "u"}}]
    spec = spec_of(backend="mpirun", device="cpu", hosts=hosts)
    plan = plan_of(spec)
    assert render_hostfile(spec, place(spec)) == "10.0.0.1 slots=3\n10.0.0.2 slots=1\n"
    sched, mpi = plan.processes
    assert sched.role == "scheduler" and sched.host == "n1" and sched.env["MS_WORKER_NUM"] == "4"
    assert (mpi.role, mpi.host, mpi.ranks) == ("mpirun", "n1", (0, 1, 2, 3))
    argv = shlex.split(mpi.command)
    assert argv[:3] == ["exec", "mpirun", "-n"] and argv[3] == "4"
    assert argv[argv.index("--hostfile") + 1] == "/w/.refinenet/jobs/j1/hostfile"
    assert argv[argv.index("--output-filename") + 1] == "/w/.refinenet/jobs/j1/attempt_0/mpirun_output"
    forwarded = {argv[i + 1] for i, a in enumerate(argv) if a == "-x"}
    assert {"MS_SCHED_HOST", "MS_SCHED_PORT", "REFINENET_JOB_ID", "ONEDNN_MAX_CPU_ISA",
            "MS_TOPO_TIMEOUT", "MS_NODE_TIMEOUT"} <= forwarded == set(mpi.env)
    assert ("--allow-run-as-root" in argv) is flag
    start = argv.index("/v/python")
    assert argv[start:start + 5] == ["/v/python", "-m", "refinenet.train", "--stage", "r1"]
    assert argv[argv.index("--wdir") + 1] == "/w" and argv[argv.index("--bind-to") + 1] == "none"
    assert [(f.host, f.local_name, f.content) for f in plan.files] == [
        ("n1", "hostfile", "10.0.0.1 slots=3\n10.0.0.2 slots=1\n")]


def test_training_commands_and_defaults():
    spec = spec_of(job={"data": "d.lst", "pretrained": "/p/resnet.ckpt", "output_dir": "out",
                        "extra_args": ["--amp-level", "O0"],
                        "stage_overrides": {"r1": {"epochs": 2, "crop_size": 33, "flip": True,
                                                   "keep": False, "scales": [0.5, 1.0]},
                                            "r2": {"epochs": 1}}})
    r1 = shlex.split(plan_of(spec).processes[1].command)
    assert r1 == ["exec", "/venv/bin/python", "-m", "refinenet.train", "--stage", "r1", "--device", "cpu",
                  "--data", "d.lst", "--output-dir", "/w/out/r1", "--pretrained", "/p/resnet.ckpt",
                  "--epochs", "2", "--crop-size", "33", "--flip", "--scales", "0.5", "1.0",
                  "--amp-level", "O0"]
    r2 = shlex.split(plan_of(spec, "r2", resume="/w/out/r2/ckpt/refinenet-1_4.ckpt").processes[1].command)
    assert r2[r2.index("--pretrained") + 1] == "latest:/w/out/r1/ckpt"
    assert r2[r2.index("--output-dir") + 1] == "/w/out/r2"
    assert r2[-4:-1] == ["--resume", "/w/out/r2/ckpt/refinenet-1_4.ckpt", "--amp-level"]
    dropped = with_stage_options(spec, "r1", ["pretrained=null"])
    assert "--pretrained" not in plan_of(dropped).processes[1].command


@pytest.mark.parametrize("stage, module, want", [
    ("eval", "refinenet.evaluate", ["--device", "cpu", "--data-lst", "v.lst", "--ckpt",
                                    "latest:/w/out/r2/ckpt", "--output", "/w/out/eval/eval.json"]),
    ("export", "refinenet.export", ["--device", "cpu", "--ckpt", "latest:/w/out/r2/ckpt", "--format",
                                    "MINDIR", "--output", "/w/out/export/refinenet"]),
])
def test_eval_and_export_run_one_process_on_rank_0(stage, module, want):
    plan = plan_of(spec_of(), stage)
    (proc,) = plan.processes
    assert (proc.name, proc.role, proc.ranks, len(plan.slots)) == ("r0", "rank", (0,), 1)
    assert shlex.split(proc.command) == ["exec", "/venv/bin/python", "-m", module, *want]
    assert "MS_ROLE" not in proc.env and proc.env["LOCAL_RANK"] == "0"
    with pytest.raises(BadInput, match="nothing to resume"):
        plan_of(spec_of(), stage, resume="/x.ckpt")


def test_required_inputs_and_bad_arguments():
    no_data = spec_of(job={})
    with pytest.raises(ClusterFileError, match="job.data: required for stage r1"):
        plan_of(no_data)
    with pytest.raises(ClusterFileError, match="job.val_data: required for stage eval"):
        plan_of(no_data, "eval")
    with pytest.raises(BadInput, match="not an absolute"):
        plan_of(spec_of(), resume="ckpt/x.ckpt")
    with pytest.raises(BadInput, match="job id"):
        specs.plan_of(spec_of(), "r1", job_id="a;b")
    with pytest.raises(BadInput, match="auto"):
        auto = spec_of(master={"port": "auto"})
        f = factory_of(auto, "r1")
        render_plan(auto, f.slots, f.workload, f.backend, "/j", job_id="j")


def test_templates_refuse_unquoted_and_undefined_values():
    env = quoting._environment("shell", str(quoting.templates_dir()))
    with pytest.raises(quoting.TemplateValueError):
        env.from_string("echo {{ x }}").render(x="$(touch /tmp/x)")
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("echo {{ y | shquote }}").render()
    assert env.from_string("echo {{ x | shquote }}").render(x="a'b") == "echo 'a'\"'\"'b'"
    with pytest.raises(quoting.TemplateValueError):
        env.from_string("export {{ n | envname }}=1").render(n="A;B")


def test_plan_json_and_scripts():
    plan = plan_of(spec_of(), attempt=2)
    data = json.loads(plan.to_json())
    assert data["format"] == "refinenet-plan/1" and data["attempt"] == 2 and data["world_size"] == 2
    assert [p["rank"] for p in data["placement"]] == [0, 1]
    assert data["processes"][1]["env"]["MS_NODE_ID"] == "0"
    script = plan.scripts["local"]
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "/w/.refinenet/jobs/j1/attempt_2/logs/rank_1.log" in script
    assert set(plan.local_files()) == {"scripts/local.sh", "env/scheduler.env", "env/rank_0.env",
                                       "env/rank_1.env"}
