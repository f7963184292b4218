"""`npu-smi info` and `npu-smi info -t health` parsing against recorded outputs (tests/fixtures/npu_smi)."""
from pathlib import Path

import pytest

from launcher.health.npu_smi import (
    HEALTH_STATES,
    NpuSmiParseError,
    Usage,
    parse_npu_smi_health,
    parse_npu_smi_info,
)
from launcher.health.probes import npu_readings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "npu_smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_fixtures_keep_their_source_header():
    for path in FIXTURES.glob("npu_smi_*.txt"):
        assert path.read_text(encoding="utf-8").startswith("# source: "), path.name


def test_910b2c_two_cards_no_processes():
    info = parse_npu_smi_info(fixture("npu_smi_info_910b2c_2card_with_procs.txt"))
    assert (info.tool_version, info.driver_version) == ("23.0.rc3", "23.0.rc3")
    assert [(c.npu_id, c.chip_id) for c in info.chips] == [(0, 0), (1, 0)]
    first, second = info.chips
    assert first.name == "910B2C" and first.health == "OK"
    assert first.power_w == 83.4 and first.temp_c == 35.0 and first.aicore_pct == 0.0
    assert first.hbm_mb == Usage(4302, 65536) and second.hbm_mb == Usage(4302, 65536)
    assert first.memory_mb == Usage(0, 0) and first.hugepages == Usage(0, 0)
    assert first.bus_id == "0000:5A:00.0" and second.bus_id == "0000:29:00.0"
    assert second.temp_c == 37.0 and first.phy_id is None
    assert info.processes == ()


def test_910a_legacy_without_hugepages():
    info = parse_npu_smi_info(fixture("npu_smi_info_910a_4card_legacy.txt"))
    assert (info.tool_version, info.driver_version) == ("1.9.3", "21.0.rc1")
    assert [c.npu_id for c in info.chips] == [4, 5, 6, 7]
    assert all(c.chip_id == 0 and c.name == "910A" and c.health == "OK" for c in info.chips)
    four = info.chip(4)
    assert four.memory_mb == Usage(303, 15171) and four.hbm_mb == Usage(0, 32768)
    assert four.power_w == 67.2 and four.temp_c == 30.0 and four.hugepages is None
    assert info.chip(7).memory_mb == Usage(2563, 15078) and info.chip(7).bus_id == "0000:02:00.0"
    assert [c.memory_mb.used for c in info.chips] == [303, 2123, 1061, 2563]
    assert info.processes == ()


def test_a3_two_chips_per_npu_phy_id_and_extra_process_column():
    info = parse_npu_smi_info(fixture("npu_smi_info_ascend910_a3_excerpt.txt"))
    assert info.tool_version == "26.0.rc2"
    assert [(c.npu_id, c.chip_id, c.phy_id) for c in info.chips] == [(0, 0, 0), (0, 1, 1), (7, 1, 15)]
    chip0, chip1, last = info.chips
    assert chip0.name == "Ascend910" and chip0.power_w == 162.6 and chip0.temp_c == 34.0
    assert chip1.power_w is None, "'-' is no reading"
    assert chip0.hbm_mb == Usage(3419, 65536) and chip1.hbm_mb == Usage(2874, 65536)
    assert last.hbm_mb == Usage(31877, 65536), "'31877/ 65536' spacing"
    assert last.bus_id == "0000:83:00.0" and last.temp_c == 35.0
    [proc] = info.processes
    assert (proc.npu_id, proc.chip_id, proc.pid) == (0, 0, 632268)
    assert (proc.name, proc.memory_mb) == ("python3.1", 197)
    assert dict(proc.extra) == {"Process id in container": "NA"}
    assert info.processes_on(0, 0) == (proc,) and info.processes_on(0, 1) == ()


def test_readings_keyed_by_device_id():
    a3 = npu_readings(parse_npu_smi_info(fixture("npu_smi_info_ascend910_a3_excerpt.txt")))
    assert sorted(a3) == [0, 1, 15]
    assert a3[15].label == "npu 7 chip 1" and a3[15].memory_used_mb == 31877
    assert [(p.pid, p.name, p.memory_mb) for p in a3[0].processes] == [(632268, "python3.1", 197)]
    legacy = npu_readings(parse_npu_smi_info(fixture("npu_smi_info_910a_4card_legacy.txt")))
    assert sorted(legacy) == [4, 5, 6, 7]
    assert (legacy[4].label, legacy[4].memory_used_mb, legacy[4].memory_total_mb) == ("npu 4", 0, 32768)
    b = npu_readings(parse_npu_smi_info(fixture("npu_smi_info_910b2c_2card_with_procs.txt")))
    assert (b[1].memory_used_mb, b[1].memory_total_mb, b[1].processes) == (4302, 65536, ())


def test_unknown_extra_column_is_kept():
    text = fixture("npu_smi_info_910b2c_2card_with_procs.txt")
    text = text.replace("Hugepages-Usage(page)|", "Hugepages-Usage(page) Volt(V)|", 1)
    text = text.replace("0    / 0             |", "0    / 0       0.9   |")
    info = parse_npu_smi_info(text)
    assert [dict(c.extra) for c in info.chips] == [{"Volt(V)": "0.9"}, {"Volt(V)": "0.9"}]
    assert info.chips[0].hbm_mb == Usage(4302, 65536)


def test_process_rows_of_910b_layout():
    text = fixture("npu_smi_info_910b2c_2card_with_procs.txt").replace(
        "| No running processes found in NPU 1                                                            |",
        "| 1       0                 | 4242          | python                   | 3100                    |")
    info = parse_npu_smi_info(text)
    assert [(p.npu_id, p.chip_id, p.pid, p.name, p.memory_mb) for p in info.processes] == [
        (1, 0, 4242, "python", 3100)]


@pytest.mark.parametrize("status", HEALTH_STATES)
def test_health_status_each_state(status):
    text = fixture("npu_smi_health_chip_ok.txt").replace(": OK", f": {status}")
    if status != "OK":
        text = text.replace("Error Code                     : NA", "Error Code : 0x80E01801")
    [record] = parse_npu_smi_health(text)
    assert record.health == status
    assert record.error_code == (None if status == "OK" else "0x80E01801")
    assert record.error_info is None and record.npu_id is None


def test_health_field_spelled_health_with_mcu_block():
    records = parse_npu_smi_health(fixture("npu_smi_health_device_all_chips.txt"))
    assert [(r.npu_id, r.chip_id, r.chip_name, r.health) for r in records] == [(0, 0, None, "OK"),
                                                                               (0, None, "MCU", "OK")]


@pytest.mark.parametrize("state", ["Warning", "Alarm", "Critical", "UNKNOWN"])
def test_info_table_reports_non_ok_health(state):
    text = fixture("npu_smi_info_910b2c_2card_with_procs.txt").replace(
        "| 1     910B2C              | OK  ", f"| 1     910B2C              | {state:<4}")
    assert [c.health for c in parse_npu_smi_info(text).chips] == ["OK", state]


def test_garbled_output_names_what_was_expected():
    with pytest.raises(NpuSmiParseError, match="no device table found: expected the header 'NPU Name"):
        parse_npu_smi_info("dcmi module initialize failed. ret is -8005\n")
    text = fixture("npu_smi_info_910b2c_2card_with_procs.txt").replace("4302 / 65536", "4302 65536 x", 1)
    with pytest.raises(NpuSmiParseError, match=r"line 9: expected 3 values for columns AICore\(%\) "
                                               r"Memory-Usage\(MB\) HBM-Usage\(MB\), found 5"):
        parse_npu_smi_info(text)
    cut = fixture("npu_smi_info_910a_4card_legacy.txt").replace("0    / 32768   |", "0    / 32", 1)
    with pytest.raises(NpuSmiParseError, match="line 9: table line cut short"):
        parse_npu_smi_info(cut)
    with pytest.raises(NpuSmiParseError, match="expected a 'Health Status' or 'Health' field"):
        parse_npu_smi_health("npu-smi info -t health -i 0\n        Error Code : NA\n")


def test_row_without_its_second_line_is_an_error():
    lines = fixture("npu_smi_info_910a_4card_legacy.txt").splitlines()
    del lines[8]  # the Chip/Bus-Id row of NPU 4
    with pytest.raises(NpuSmiParseError, match="line 8: expected a second row"):
        parse_npu_smi_info("\n".join(lines))
