"""The preflight gate on this machine as cluster hosts (local transport): real probes, a real bound port,
a fake npu-smi printing recorded outputs."""
import socket

import pytest

from launcher.errors import LauncherError
from launcher.health.preflight import PreflightFailed, run_preflight
from launcher.health.verdicts import HealthThresholds
from launcher.transport.local import LocalTransport
from tests.fixtures.fake_tools import FakeTools, recorded
from tests.harness.specs import spec_of

pytestmark = pytest.mark.e2e

B2C = "npu_smi/npu_smi_info_910b2c_2card_with_procs.txt"


def make_spec(tmp_path, device="cpu", port="auto", **health):
    """node-a and node-b (cpu, one rank each) or node-a alone (devices 0 and 1), this machine both."""
    hosts = [{"name": f"node-{h}", "workdir": str(tmp_path / h),
              **({"ranks": 1} if device == "cpu" else {"devices": [0, 1]})} for h in "ab"]
    return spec_of(name="pf", backend="dynamic" if device == "cpu" else "msrun", device=device,
                   hosts=hosts if device == "cpu" else hosts[:1], master={"port": port, "host": "node-a"},
                   job=None, health=health or None, source="pf.yaml")


def transports(spec):
    return {h.name: LocalTransport(h.name) for h in spec.hosts}


def test_all_checks_pass(tmp_path, port):
    spec = make_spec(tmp_path, port=port)
    report = run_preflight(spec, transports(spec))
    assert report.ok, report.render()
    assert {(c.host, c.check) for c in report.checks} == {
        ("node-a", "reachable"), ("node-a", "workdir writable"), ("node-a", "disk space"),
        ("node-a", "master port"), ("node-b", "reachable"), ("node-b", "workdir writable"),
        ("node-b", "disk space")}
    assert report.render().splitlines()[-1] == "preflight passed"
    report.raise_for_failures()
    assert not (tmp_path / "a").exists(), "preflight writes nothing"


def test_master_port_already_bound(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        spec = make_spec(tmp_path, port=port)
        report = run_preflight(spec, transports(spec))
    assert not report.ok
    [failure] = report.failures
    assert (failure.host, failure.check) == ("node-a", "master port")
    assert failure.detail == f"port {port} cannot be bound on node-a: Address already in use"
    with pytest.raises(PreflightFailed) as err:
        report.raise_for_failures()
    assert isinstance(err.value, LauncherError) and err.value.exit_code == 2
    assert err.value.hosts == ["node-a"]
    assert str(err.value) == f"preflight failed: node-a: master port: {failure.detail}"
    assert "FAILED" in report.render()


def test_disk_and_workdir_failures_name_each_host(tmp_path):
    (tmp_path / "b").write_text("a file where the workdir should be")
    spec = make_spec(tmp_path, min_free_disk_gb=1e9)
    report = run_preflight(spec, transports(spec))
    failed = {(c.host, c.check): c.detail for c in report.failures}
    assert set(failed) == {("node-a", "disk space"), ("node-b", "disk space"), ("node-b", "workdir writable")}
    assert failed[("node-a", "disk space")].endswith("need 1e+09 GB")
    b = tmp_path / "b"
    assert failed[("node-b", "workdir writable")] == f"workdir {b}: {b} exists and is not a directory"
    message = str(PreflightFailed(report))
    assert "node-a: disk space" in message and "node-b: workdir writable" in message


def test_unreachable_host_skips_its_other_checks(tmp_path):
    spec = make_spec(tmp_path)
    report = run_preflight(spec, {"node-a": LocalTransport("node-a")},
                           unreachable={"node-b": "connection refused"})
    assert [(c.host, c.check, c.ok) for c in report.checks if c.host == "node-b"] == [
        ("node-b", "reachable", False, )]
    assert report.failures[0].detail == "connection refused"


def test_unhealthy_npu_fails_the_gate(tmp_path, monkeypatch):
    tools = FakeTools(tmp_path / "tools")
    monkeypatch.setenv("PATH", tools.path_env())
    info = recorded(B2C).replace("| 1     910B2C              | OK  ", "| 1     910B2C              | Alarm")
    alarm = recorded("npu_smi/npu_smi_health_chip_ok.txt").replace(": OK", ": Alarm")
    tools.install("npu-smi", info, health=alarm)
    spec = make_spec(tmp_path, device="ascend")
    report = run_preflight(spec, transports(spec))
    [failure] = report.failures
    assert (failure.host, failure.check, failure.detail) == ("node-a", "devices", "device 1: health Alarm")

    tools.set_output("npu-smi", recorded(B2C).replace("| 1     910B2C              | OK     ",
                                                      "| 1     910B2C              | Warning"))
    report = run_preflight(spec, transports(spec))
    assert report.ok and "degraded: device 1: health Warning" in report.render()
    strict = run_preflight(spec, transports(spec), HealthThresholds(warning_is_failure=True))
    assert [c.detail for c in strict.failures] == ["device 1: health Warning"]


def test_missing_tool_fails_the_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = make_spec(tmp_path, device="gpu")
    [failure] = run_preflight(spec, transports(spec)).failures
    assert failure.check == "devices" and failure.detail.startswith("nvidia-smi: tool not found")
