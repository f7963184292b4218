"""`refinenet-launch --dry-run` as a user runs it: every shipped cluster file renders, bad input exits 2
and writes nothing."""
import json
from pathlib import Path

import pytest
import yaml

from launcher.commands import launch
from launcher.planning.prepare import prepare
from launcher.planning.request import LaunchRequest
from launcher.resources import cluster_configs_dir
from tests.harness.cli import cli

pytestmark = pytest.mark.e2e
HCCN = "".join(f"address_{d}=192.168.{10 * (d % 4 + 1)}.{21 + d // 4}\nnetmask_{d}=255.255.255.0\n"
               for d in range(8))
WORLD = {"8xascend": 8, "2x8xascend": 16, "8xgpu": 8, "2x8xgpu-msrun": 16, "local-cpu": 2, "ssh-cpu": 4}


@pytest.fixture
def hccn_dir(tmp_path):
    folder = tmp_path / "hccn"
    folder.mkdir()
    (folder / "hccn.conf").write_text(HCCN)
    return folder


@pytest.mark.parametrize("name", sorted(WORLD))
def test_shipped_cluster_files_dry_run(tmp_path, hccn_dir, name):
    job = tmp_path / "job"
    res = cli("--cluster", cluster_configs_dir() / f"{name}.yaml", "--stage", "r1", "--dry-run",
              "--job-dir", job, "--hccn-conf-dir", hccn_dir)
    assert res.returncode == 0, res.stderr
    plan = json.loads((job / "plan.json").read_text())
    assert plan["world_size"] == WORLD[name] and len(plan["placement"]) == WORLD[name]
    for r in range(WORLD[name]):
        assert (job / "env" / f"rank_{r}.env").is_file()
    for host in plan["scripts"].values():
        assert (job / host).is_file()
    assert (job / "rank_table.json").exists() == ("ascend" in name)
    assert (job / "hostfile").exists() == (name == "8xgpu")
    assert "placement:" in res.stdout and "dry run: nothing started" in res.stdout
    if "ascend" in name:
        table = json.loads((job / "rank_table.json").read_text())
        assert table["server_list"][0]["device"][1]["device_ip"] == "192.168.20.21"


def test_device_ips_by_override_and_every_stage(tmp_path):
    ips = "[" + ", ".join(f"10.9.0.{d}" for d in range(8)) + "]"
    for stage in ("r1", "r2", "eval", "export"):
        job = tmp_path / stage
        res = cli("--cluster", "8xascend", "--stage", stage, "--dry-run", "--job-dir", job,
                  "--override", f"hosts[0].device_ips={ips}", "--set", "epochs=3", "--max-restarts", "1")
        assert res.returncode == 0, res.stderr
        plan = json.loads((job / "plan.json").read_text())
        rank0 = plan["processes"][0]
        if stage in ("r1", "r2"):
            assert "--epochs 3" in rank0["command"] and rank0["env"]["RANK_SIZE"] == "8"
        else:
            assert len(plan["processes"]) == 1 and plan["world_size"] == 1


def test_local_cpu_demo_defaults(tmp_path):
    res = cli("--cluster", "local-cpu", "--stage", "r1", "--dry-run", "--runs-dir", tmp_path / "runs",
              "--job-id", "demo-1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads((tmp_path / "runs" / "demo-1" / "plan.json").read_text())
    sched, r0, _ = plan["processes"]
    assert sched["role"] == "scheduler" and r0["cwd"] == str(tmp_path)
    assert "--data demo_data/sbd_train_lst.txt" in r0["command"] and r0["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert f"--output-dir {tmp_path}/demo_output/r1" in r0["command"]


@pytest.mark.parametrize("change, words", [
    ({"hosts": [{"name": "a;touch x", "ranks": 1}]}, "hosts[0].name"),
    ({"hosts": [{"ranks": 1, "devcies": [0]}]}, "hosts[0].devcies: unknown key"),
    ({"master": {"port": 123456}}, "master.port"),
    ({"env": {"BAD NAME": "1"}}, "env.BAD NAME"),
])
def test_bad_cluster_file_exits_2_and_writes_nothing(tmp_path, change, words):
    data = yaml.safe_load((cluster_configs_dir() / "local-cpu.yaml").read_text())
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    job = tmp_path / "job"
    res = cli("--cluster", path, "--stage", "r1", "--dry-run", "--job-dir", job)
    assert res.returncode == 2 and words in res.stderr, res.stderr
    assert not job.exists()


def test_other_bad_input_exits_2(tmp_path):
    job = tmp_path / "job"
    assert cli("--cluster", "local-cpu", "--stage", "r1", "--dry-run", "--job-dir", job,
               "--ranks", "0,5").returncode == 2
    res = cli("--cluster", "8xascend", "--stage", "r1", "--dry-run", "--job-dir", job,
              "--hccn-conf-dir", tmp_path)
    assert res.returncode == 2 and "hosts[0].hccn_conf" in res.stderr
    assert cli("--cluster", "nope.yaml", "--stage", "r1", "--dry-run").returncode == 2
    assert cli("--cluster", "local-cpu", "--stage", "r9", "--dry-run").returncode == 2
    assert not job.exists()
    job.mkdir()
    (job / "job.json").write_text("{}")
    res = cli("--cluster", "local-cpu", "--stage", "r1", "--dry-run", "--job-dir", job)
    assert res.returncode == 2 and "launched job" in res.stderr


def test_plan_factory_renders_attempts(tmp_path):
    args = launch.build_parser("refinenet-launch").parse_args(
        ["--cluster", "local-cpu", "--stage", "r1", "--job-dir", str(tmp_path / "j")])
    prepared = prepare(LaunchRequest.from_args(args))
    plan = prepared.factory(attempt=1, resume="/w/demo_output/r1/ckpt/refinenet-1_2.ckpt")
    assert prepared.job_id == "j" and plan.attempt == 1 and isinstance(plan.master_port, int)
    assert plan.processes[1].command.endswith("--resume /w/demo_output/r1/ckpt/refinenet-1_2.ckpt")
    assert Path(plan.job_dir) == prepared.job_dir.absolute()


def test_hccn_conf_is_read_on_the_host(tmp_path, hccn_dir):
    job = tmp_path / "job"
    res = cli("--cluster", "8xascend", "--stage", "r1", "--dry-run", "--job-dir", job,
              "--override", f"hosts[0].hccn_conf={hccn_dir / 'hccn.conf'}")
    assert res.returncode == 0, res.stderr
    table = json.loads((job / "rank_table.json").read_text())
    ips = [d["device_ip"] for d in table["server_list"][0]["device"]]
    assert ips[:2] == ["192.168.10.21", "192.168.20.21"]
