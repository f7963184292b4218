"""Health classification, host/cluster verdicts, rendering, directory checks and the samples file."""
import json
from pathlib import Path

import pytest

from launcher.health.collect import dir_checks
from launcher.health.host import DirSample, HostSample, MemorySample, parse_host_sample
from launcher.health.npu_smi import parse_npu_smi_info
from launcher.health.probes import DeviceReading, npu_readings
from launcher.health.samples import HealthSampleWriter, read_samples
from launcher.health.verdicts import (
    ClusterHealth,
    HealthReport,
    HealthThresholds,
    Verdict,
    classify_device,
    classify_devices,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def reading(health="OK", **kw) -> DeviceReading:
    return DeviceReading(device=kw.pop("device", 0), label="npu 0", name="910B2C", health=health, **kw)


@pytest.mark.parametrize("health, verdict", [
    ("OK", Verdict.HEALTHY), ("Warning", Verdict.DEGRADED), ("Alarm", Verdict.UNHEALTHY),
    ("Critical", Verdict.UNHEALTHY), ("UNKNOWN", Verdict.UNHEALTHY), ("Broken", Verdict.UNHEALTHY),
    ("LOST", Verdict.UNHEALTHY)])
def test_health_word_classification(health, verdict):
    row = classify_device(reading(health))
    assert row.verdict == verdict
    assert bool(row.reasons) == (verdict != Verdict.HEALTHY)


def test_warning_can_count_as_failure_and_reasons_carry_error_code():
    row = classify_device(reading("Warning", detail="error code 0x80E01801"),
                          HealthThresholds(warning_is_failure=True))
    assert row.verdict == Verdict.UNHEALTHY and row.reasons == ("health Warning (error code 0x80E01801)",)
    assert classify_device(reading("Broken")).reasons == ("unrecognised health 'Broken'",)


def test_thresholds_and_ecc():
    hot = reading(temp_c=91.0, memory_used_mb=60000, memory_total_mb=65536)
    assert classify_device(hot).verdict == Verdict.HEALTHY
    row = classify_device(hot, HealthThresholds(max_temp_c=85, max_memory_fraction=0.5))
    assert row.verdict == Verdict.UNHEALTHY
    assert row.reasons == ("temperature 91 C > 85 C", "memory 60000/65536 MB used > 50%")
    assert classify_device(reading(ecc_errors=2)).reasons == ("2 uncorrected ECC errors",)
    assert classify_device(reading(ecc_errors=None, temp_c=None), HealthThresholds(max_temp_c=1)).verdict \
        == Verdict.HEALTHY


def test_device_missing_from_the_tool_is_unhealthy():
    text = (FIXTURES / "npu_smi/npu_smi_info_910a_4card_legacy.txt").read_text()
    readings = npu_readings(parse_npu_smi_info(text))
    rows = classify_devices([4, 5, 0], readings, "npu-smi")
    assert [r.verdict for r in rows] == [Verdict.HEALTHY, Verdict.HEALTHY, Verdict.UNHEALTHY]
    assert rows[2].reasons == ("not listed by npu-smi (it lists 4, 5, 6, 7)",)


def sample(free_gb=100.0, writable=True, exists=True) -> HostSample:
    dirs = (DirSample("/w", "/w" if exists else "/", exists, writable, None if not writable else int(1e12)),
            DirSample("/w/output", "/w", False, True, int(free_gb * 1e9), int(2e12)))
    memory = MemorySample(16 * 2**30, 8 * 2**30)
    return HostSample(time=1.0, hostname="h", psutil=True, memory=memory, dirs=dirs)


def test_dir_checks():
    assert [(n, ok) for n, ok, _ in dir_checks(sample(), "/w", "/w/output", 1.0)] == [
        ("workdir writable", True), ("disk space", True)]
    low = dir_checks(sample(free_gb=0.5), "/w", "/w/output", 2.0)
    assert low[1] == ("disk space", False,
                      "output dir /w/output: 0.50 GB free on the filesystem of /w, need 2 GB")
    assert dir_checks(sample(writable=False), "/w", "/w/output", 1.0)[0][:2] == ("workdir writable", False)


def test_verdicts_render_and_exit_codes():
    rows = classify_devices([0, 1], {0: reading(), 1: reading("Warning", device=1)}, "npu-smi")
    degraded = HealthReport("node-a", devices=rows, sample=sample())
    assert degraded.verdict == Verdict.DEGRADED
    assert ClusterHealth((degraded,)).exit_code == 0
    bad = HealthReport("node-b", problems=("npu-smi: tool not found",))
    down = HealthReport("node-c", unreachable="connection refused")
    assert ClusterHealth((degraded, bad)).exit_code == 1
    cluster = ClusterHealth((degraded, bad, down))
    assert cluster.verdict == Verdict.UNREACHABLE and cluster.exit_code == 2
    text = cluster.render()
    assert "node-a  DEGRADED" in text and "node-c  UNREACHABLE" in text
    assert "node-a: device 1: health Warning" in text and "node-c: connection refused" in text
    assert text.splitlines()[-1] == "overall: UNREACHABLE"
    data = json.loads(json.dumps(cluster.to_dict()))
    assert data["hosts"][0]["devices"][1]["verdict"] == "DEGRADED"
    assert data["hosts"][1]["reasons"] == ["npu-smi: tool not found"]


def test_host_sample_parse_errors_name_the_problem():
    with pytest.raises(ValueError, match="host sample: no output"):
        parse_host_sample("")
    with pytest.raises(ValueError, match="not the expected JSON object"):
        parse_host_sample('{"time": 1}')


def test_samples_file_appends_and_skips_torn_line(tmp_path):
    path = tmp_path / "job" / "health.jsonl"
    writer = HealthSampleWriter(path)
    writer.write({"host": "a", "verdict": Verdict.HEALTHY, "mem": sample().memory})
    writer.write({"host": "b", "devices": (reading(),)})
    with open(path, "a") as f:
        f.write('{"host": "c"')
    records = read_samples(path)
    assert [r["host"] for r in records] == ["a", "b"]
    assert records[0]["verdict"] == "HEALTHY" and records[0]["mem"]["available"] == 8 * 2**30
    assert records[1]["devices"][0]["health"] == "OK"
    assert read_samples(tmp_path / "none.jsonl") == []
