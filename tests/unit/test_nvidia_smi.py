"""`nvidia-smi --query-gpu=... --format=csv,noheader,nounits` parsing, including [N/A] values."""
from pathlib import Path

import pytest

from launcher.health.nvidia_smi import QUERY_FIELDS, NvidiaSmiParseError, parse_nvidia_smi_csv, query_args
from launcher.health.probes import gpu_readings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia_smi"


def test_query_args_match_the_parsed_fields():
    assert query_args() == ["--query-gpu=index,name,uuid,temperature.gpu,utilization.gpu,memory.used,"
                            "memory.total,power.draw,ecc.errors.uncorrected.volatile.total",
                            "--format=csv,noheader,nounits"]
    assert len(QUERY_FIELDS) == 9


def test_four_a100():
    gpus = parse_nvidia_smi_csv((FIXTURES / "nvidia_smi_query_4gpu_a100.csv").read_text())
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    g1 = gpus[1]
    assert g1.name == "NVIDIA A100-SXM4-80GB" and g1.uuid == "GPU-6b8d4c2f-3a5e-4f9b-8c7d-1e2f3a4b5c6d"
    assert (g1.temp_c, g1.util_pct, g1.memory_used_mb, g1.memory_total_mb) == (36.0, 97.0, 70211, 81920)
    assert g1.power_w == 312.55 and g1.ecc_uncorrected == 0 and not g1.lost
    assert gpus[2].ecc_uncorrected == 2 and gpus[3].temp_c == 88.0


def test_not_available_values_are_none():
    gpus = parse_nvidia_smi_csv((FIXTURES / "nvidia_smi_query_na_values.csv").read_text())
    ok, lost = gpus
    assert ok.power_w is None and ok.ecc_uncorrected is None and ok.memory_used_mb == 512
    assert lost.lost and lost.temp_c is None and lost.memory_total_mb is None
    readings = gpu_readings(gpus)
    assert readings[0].health == "OK" and readings[1].health == "LOST"


def test_plain_na_and_blank_lines():
    gpus = parse_nvidia_smi_csv("\n0, Tesla T4, GPU-x, N/A, N/A, 0, 15360, 9.87, N/A\n\n")
    assert len(gpus) == 1 and gpus[0].temp_c is None and gpus[0].ecc_uncorrected is None


def test_garbled_output_names_what_was_expected():
    with pytest.raises(NvidiaSmiParseError, match=r"line 1: expected 9 comma-separated values"):
        parse_nvidia_smi_csv("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    with pytest.raises(NvidiaSmiParseError, match="line 2: expected a number for memory.used, found 'lots'"):
        parse_nvidia_smi_csv("0, T4, GPU-a, 30, 0, 1, 15360, 9.8, 0\n"
                             "1, T4, GPU-b, 30, 0, lots, 15360, 9.8, 0")
