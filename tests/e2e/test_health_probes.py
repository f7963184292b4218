"""Probes through the real local transport: fake npu-smi/nvidia-smi scripts on PATH, and the host script
run by a real python (with psutil, and with `-S` so it falls back to /proc)."""
import json
import socket
import subprocess
import sys

import pytest

from launcher.health.host import HOST_SCRIPT, host_argv, parse_host_sample
from launcher.health.probes import NpuSmiProbe, NvidiaSmiProbe, ProbeError, ToolNotFound, read_host
from launcher.transport.local import LocalTransport
from tests.fixtures.fake_tools import FakeTools, recorded

pytestmark = pytest.mark.e2e

A3 = "npu_smi/npu_smi_info_ascend910_a3_excerpt.txt"


@pytest.fixture
def tools(tmp_path, monkeypatch) -> FakeTools:
    fake = FakeTools(tmp_path / "tools")
    monkeypatch.setenv("PATH", fake.path_env())
    return fake


def test_npu_smi_probe_reads_the_tool(tools):
    tools.install("npu-smi", recorded(A3))
    readings = NpuSmiProbe().read(LocalTransport("node-a"))
    assert sorted(readings) == [0, 1, 15]
    assert readings[15].memory_used_mb == 31877 and readings[0].processes[0].pid == 632268


def test_non_ok_chip_gets_its_error_code(tools):
    info = recorded(A3).replace("| 7     Ascend910           | OK  ", "| 7     Ascend910           | Alarm")
    health = recorded("npu_smi/npu_smi_health_chip_ok.txt").replace(": OK", ": Alarm").replace(
        "Error Code                     : NA", "Error Code                     : 0x80E01801")
    tools.install("npu-smi", info, health=health)
    readings = NpuSmiProbe().read(LocalTransport("node-a"))
    assert readings[15].health == "Alarm" and readings[15].detail == "error code 0x80E01801"
    assert readings[0].detail == ""


def test_tool_not_found_is_clear(tools):
    with pytest.raises(ToolNotFound, match="node-a: npu-smi: tool not found") as err:
        NpuSmiProbe().read(LocalTransport("node-a"))
    assert err.value.host == "node-a" and err.value.tool == "npu-smi"
    with pytest.raises(ToolNotFound, match="nvidia-smi: tool not found"):
        NvidiaSmiProbe().read(LocalTransport("node-a"))


def test_failing_or_garbled_tool(tools):
    tools.install("npu-smi", "", exit_code=3, stderr="dcmi module initialize failed. ret is -8005\n")
    with pytest.raises(ProbeError, match=r"npu-smi info failed \(exit 3\): dcmi module initialize failed"):
        NpuSmiProbe().read(LocalTransport("node-a"))
    tools.install("npu-smi", "| something else |\n")
    with pytest.raises(ProbeError, match="expected the header 'NPU Name | Health"):
        NpuSmiProbe().read(LocalTransport("node-a"))


def test_nvidia_smi_probe(tools):
    tools.install("nvidia-smi", recorded("nvidia_smi/nvidia_smi_query_4gpu_a100.csv"))
    readings = NvidiaSmiProbe().read(LocalTransport("gpu-a"))
    assert sorted(readings) == [0, 1, 2, 3] and readings[2].ecc_errors == 2 and readings[1].health == "OK"


@pytest.fixture
def processes():
    """A live child, a zombie child (killed, not reaped) and the pid of a reaped one."""
    live = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen(["sleep", "60"])
    zombie.kill()
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        yield live.pid, zombie.pid, gone.pid
    finally:
        live.kill()
        live.wait()
        zombie.wait()


@pytest.mark.parametrize("site", [True, False], ids=["psutil", "proc"])
def test_host_script(site, processes, tmp_path):
    live, zombie, gone = processes
    existing = tmp_path / "work"
    existing.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    dirs = [str(existing), str(tmp_path / "new" / "out"), str(blocker / "sub")]
    argv = host_argv(sys.executable, dirs=dirs, pids=[live, zombie, gone])
    if not site:
        argv = [sys.executable, "-S", *argv[1:]]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        argv[-1] = json.dumps({**json.loads(argv[-1]), "port": port})
        result = LocalTransport("node-a").exec(argv)
    assert result.ok, result.stderr
    sample = parse_host_sample(result.stdout)
    assert sample.psutil is site
    assert 0 < sample.memory.available <= sample.memory.total
    work, new, bad = sample.dirs
    assert (work.exists, work.writable, work.checked) == (True, True, str(existing))
    assert (new.exists, new.writable, new.checked) == (False, True, str(tmp_path))
    assert new.free > 0 and new.total >= new.free
    assert not bad.writable and bad.error == f"{blocker} exists and is not a directory"
    assert not (tmp_path / "new").exists(), "a check writes nothing outside existing folders"
    by_pid = {p.pid: p for p in sample.processes}
    assert by_pid[live].status == "sleeping" and by_pid[live].alive and by_pid[live].rss > 0
    assert by_pid[live].cpu_s is not None and by_pid[live].started is not None
    assert by_pid[zombie].status == "zombie" and not by_pid[zombie].alive
    assert by_pid[gone].status == "gone"
    assert sample.port.port == port and not sample.port.free and sample.port.error


def test_read_host_names_the_host_when_python_fails():
    with pytest.raises(ProbeError, match="node-a: python '/bin/false' could not sample the host"):
        read_host(LocalTransport("node-a"), "/bin/false")
    assert "import psutil" in HOST_SCRIPT
