"""`refinenet-launch health --cluster FILE` through the real CLI in a child process: a fake npu-smi on PATH,
cluster files written here, SSH hosts on real sshd servers."""
import json
import subprocess
import sys

import pytest

from tests.fixtures.fake_tools import FakeTools, recorded
from tests.harness.cli import cli
from tests.harness.clusters import cluster_file, ssh_host
from tests.harness.hosts import free_port

pytestmark = pytest.mark.e2e

B2C = "npu_smi/npu_smi_info_910b2c_2card_with_procs.txt"


def health(child_env, tools, *args, cwd):
    """`refinenet-launch health ARGS` with the fake tools first on PATH."""
    env = dict(child_env, PATH=tools.path_env(child_env["PATH"]))
    return cli("health", *args, env=env, cwd=cwd, timeout=120)


@pytest.fixture
def tools(tmp_path) -> FakeTools:
    return FakeTools(tmp_path / "tools")


def ascend_cluster(tmp_path, devices=(0, 1)):
    return cluster_file(tmp_path / "npu.yaml", [{"name": "node-a", "devices": list(devices),
                                                 "workdir": str(tmp_path / "w")}],
                        name="npu", backend="rank_table", device="ascend", quick=False)


def test_healthy_npus(tmp_path, child_env, tools):
    tools.install("npu-smi", recorded(B2C))
    result = health(child_env, tools, "--cluster", ascend_cluster(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOST", "VERDICT", "MEM", "AVAIL", "DIR", "DISK", "FREE", "WRITABLE"]
    assert lines[1].split()[:2] == ["node-a", "HEALTHY"]
    device_rows = [line.split() for line in lines if line.startswith("node-a") and "910B2C" in line]
    assert device_rows == [["node-a", "0", "npu", "0", "910B2C", "OK", "HEALTHY", "35C", "83.4W", "0%",
                            "4302/65536", "0"],
                           ["node-a", "1", "npu", "1", "910B2C", "OK", "HEALTHY", "37C", "83.4W", "0%",
                            "4302/65536", "0"]]
    assert lines[-1] == "overall: HEALTHY"


def test_unhealthy_npu_and_json(tmp_path, child_env, tools):
    info = recorded(B2C).replace("| 0     910B2C              | OK  ", "| 0     910B2C              | Alarm")
    alarm = recorded("npu_smi/npu_smi_health_chip_ok.txt").replace(": OK", ": Alarm")
    tools.install("npu-smi", info, health=alarm.replace("Error Code                     : NA",
                                                        "Error Code : 0x80C98002"))
    cluster = ascend_cluster(tmp_path, devices=(0, 1, 2))
    result = health(child_env, tools, "--cluster", cluster, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "node-a: device 0: health Alarm (error code 0x80C98002)" in result.stdout
    assert "node-a: device 2: not listed by npu-smi (it lists 0, 1)" in result.stdout

    result = health(child_env, tools, "--cluster", cluster, "--json", cwd=tmp_path)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["verdict"] == "UNHEALTHY"
    [host] = data["hosts"]
    assert [(d["device"], d["verdict"]) for d in host["devices"]] == [
        (0, "UNHEALTHY"), (1, "HEALTHY"), (2, "UNHEALTHY")]
    assert host["devices"][0]["detail"] == "error code 0x80C98002"


def test_threshold_options(tmp_path, child_env, tools):
    tools.install("npu-smi", recorded(B2C))
    result = health(child_env, tools, "--cluster", ascend_cluster(tmp_path), "--max-temp", "36", cwd=tmp_path)
    assert result.returncode == 1
    assert "node-a: device 1: temperature 37 C > 36 C" in result.stdout


def test_bad_input_exits_2(tmp_path, child_env, tools):
    bad = cluster_file(tmp_path / "bad.yaml", [{"name": "a", "devices": "all"}], name="x", backend="msrun",
                       device="ascend", quick=False)
    result = health(child_env, tools, "--cluster", bad, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "hosts[0].devices: expected a list of device ids" in result.stderr
    missing = health(child_env, tools, "--cluster", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "none.yaml: cannot read" in missing.stderr
    fraction = health(child_env, tools, "--cluster", bad, "--max-memory-fraction", "3", cwd=tmp_path)
    assert fraction.returncode == 2 and "--max-memory-fraction: 3.0 is not in (0, 1]" in fraction.stderr


def test_ssh_hosts_and_an_unreachable_one(tmp_path, child_env, tools, ssh_hosts):
    hosts = [ssh_host(h) for h in ssh_hosts]
    cluster = cluster_file(tmp_path / "ssh.yaml", hosts, name="ssh", quick=False)
    result = health(child_env, tools, "--cluster", cluster, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert [(h["host"], h["verdict"]) for h in data["hosts"]] == [(h.name, "HEALTHY") for h in ssh_hosts]
    for host, report in zip(ssh_hosts, data["hosts"]):
        assert report["host_sample"]["dirs"][0]["path"] == host.workdir

    down = dict(hosts[0], name="node-down", address="127.0.0.1",
                ssh=dict(hosts[0]["ssh"], port=free_port("127.0.0.1"), connect_timeout_s=5))
    down_file = cluster_file(tmp_path / "down.yaml", [hosts[0], down], name="ssh", quick=False)
    result = health(child_env, tools, "--cluster", down_file, cwd=tmp_path)
    assert result.returncode == 2
    names = {hosts[0]["name"], "node-down"}
    rows = [line.split() for line in result.stdout.splitlines()]
    verdicts = [row[:2] for row in rows if row and row[0] in names]
    assert verdicts == [[hosts[0]["name"], "HEALTHY"], ["node-down", "UNREACHABLE"]]
    assert "node-down: connection refused by 127.0.0.1" in result.stdout
    assert "cannot reach node-down" in result.stderr


def test_health_modules_do_not_import_mindspore(child_env):
    code = ("import sys, launcher.health, launcher.commands.health, launcher.health.monitor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mindspore', 'refinenet', 'numpy')))")
    result = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
