"""The run-time health monitor on real processes: a device that turns unhealthy, a rank process that becomes
a zombie and then disappears, a host it cannot reach; samples land in health.jsonl."""
import subprocess
import time

import pytest

from launcher.health.monitor import HealthMonitor
from launcher.health.samples import read_samples
from launcher.spec.load import parse_cluster
from launcher.transport.local import LocalTransport
from tests.fixtures.fake_tools import FakeTools, recorded
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

B2C = "npu_smi/npu_smi_info_910b2c_2card_with_procs.txt"


def wait_for(predicate):
    return wait_until(predicate, 20.0)


def test_monitor_reports_device_and_process_failures(tmp_path, monkeypatch):
    tools = FakeTools(tmp_path / "tools")
    monkeypatch.setenv("PATH", tools.path_env())
    tools.install("npu-smi", recorded(B2C))
    spec = parse_cluster({"name": "mon", "backend": "msrun", "device": "ascend",
                          "hosts": [{"name": "node-a", "devices": [0, 1], "workdir": str(tmp_path / "w")}]},
                         "mon.yaml")
    rank = subprocess.Popen(["sleep", "60"])
    out = tmp_path / "job" / "health.jsonl"
    monitor = HealthMonitor(spec, {"node-a": LocalTransport("node-a")}, {"node-a": [rank.pid]}, out,
                            interval_s=0.2)
    try:
        with monitor:
            wait_for(lambda: monitor.samples_taken >= 2)
            assert monitor.check() == []

            tools.set_output("npu-smi", recorded(B2C).replace("| 1     910B2C              | OK      ",
                                                              "| 1     910B2C              | Critical"))
            [device] = wait_for(monitor.check)
            assert (device.host, device.kind, device.device) == ("node-a", "device", 1)
            assert str(device) == "node-a: device 1 unhealthy: health Critical"
            tools.set_output("npu-smi", recorded(B2C))

            rank.kill()
            [zombie] = wait_for(lambda: [f for f in monitor.check() if f.kind == "process"])
            assert (zombie.kind, zombie.pid, zombie.detail) == ("process", rank.pid,
                                                                f"rank process {rank.pid} is zombie")
            rank.wait()
            gone = wait_for(lambda: [f for f in monitor.check() if "gone" in f.detail])
            assert gone[0].pid == rank.pid

            monitor.set_pids("node-a", [])
            time.sleep(0.5)
            assert monitor.check() == []
        assert not monitor.running
    finally:
        rank.kill()
        rank.wait()
    assert monitor.errors == []

    records = read_samples(out)
    assert len(records) >= 5 and {r["host"] for r in records} == {"node-a"}
    first = records[0]
    assert set(first) >= {"time", "host", "verdict", "devices", "mem", "disk", "processes", "errors"}
    assert [d["device"] for d in first["devices"]] == [0, 1] and first["devices"][0]["memory_used_mb"] == 4302
    assert first["disk"]["path"] == str(tmp_path / "w" / "output") and first["disk"]["free"] > 0
    assert first["processes"][0]["pid"] == rank.pid and first["processes"][0]["rss"] > 0
    assert first["mem"]["total"] > 0 and first["verdict"] == "HEALTHY"
    assert any(r["verdict"] == "UNHEALTHY" for r in records)
    cpu = [p["cpu_percent"] for r in records for p in r["processes"] if p.get("cpu_percent") is not None]
    assert cpu and all(0 <= c < 100 for c in cpu)


def test_monitor_survives_an_unreachable_host(tmp_path):
    spec = parse_cluster({"name": "mon", "backend": "dynamic", "device": "cpu",
                          "hosts": [{"name": "node-a", "ranks": 1, "workdir": str(tmp_path / "a")},
                                    {"name": "node-b", "ranks": 1, "workdir": str(tmp_path / "b")}]},
                         "mon.yaml")
    monitor = HealthMonitor(spec, {"node-a": LocalTransport("node-a")}, {}, tmp_path / "health.jsonl",
                            interval_s=0.05, unreachable_after=3)
    for _ in range(3):
        monitor.sample_once()
    [failure] = monitor.check()
    assert (failure.host, failure.kind) == ("node-b", "probe")
    assert failure.detail == "health probes failed 3 times in a row: no connection to the host"
    records = read_samples(tmp_path / "health.jsonl")
    assert [r["host"] for r in records] == ["node-a", "node-b"] * 3
    assert records[0]["errors"] == [] and records[1]["errors"] == ["no connection to the host"]
