"""Parser for `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`.

Fields a GPU cannot report come as `[N/A]`, `N/A` or `[Not Supported]` and become None.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import List, Optional, Tuple

from launcher.health.errors import ToolOutputError

__all__ = ["QUERY_FIELDS", "GpuInfo", "NvidiaSmiParseError", "query_args", "parse_nvidia_smi_csv"]

QUERY_FIELDS = ("index", "name", "uuid", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total",
                "power.draw", "ecc.errors.uncorrected.volatile.total")

_MISSING = frozenset({"", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]",
                      "[GPU is lost]"})


class NvidiaSmiParseError(ToolOutputError):
    """nvidia-smi output without the expected shape; names the line and what was expected."""

    tool = "nvidia-smi"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU. Memory in MiB, power in W, temperature in C, utilisation in %."""

    index: int
    name: str
    uuid: Optional[str]
    temp_c: Optional[float]
    util_pct: Optional[float]
    memory_used_mb: Optional[int]
    memory_total_mb: Optional[int]
    power_w: Optional[float]
    ecc_uncorrected: Optional[int]
    lost: bool = False


def query_args() -> List[str]:
    """Arguments after `nvidia-smi` that produce the CSV this module parses."""
    return [f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]


def _value(raw: str, kind: type, field: str, line_no: int, line: str):
    text = raw.strip()
    if text in _MISSING:
        return None
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise NvidiaSmiParseError(f"expected a number for {field}, found {text!r}", line_no, line) from None


def parse_nvidia_smi_csv(text: str) -> Tuple[GpuInfo, ...]:
    """One `GpuInfo` per non-empty line; lines starting with '#' are ignored."""
    fields = QUERY_FIELDS
    gpus: List[GpuInfo] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = next(csv.reader([line], skipinitialspace=True))
        if len(row) != len(fields):
            raise NvidiaSmiParseError(
                f"expected {len(fields)} comma-separated values ({','.join(fields)}), found {len(row)}",
                line_no, line)
        values = dict(zip(fields, row))
        index = _value(values["index"], int, "index", line_no, line)
        if index is None:
            raise NvidiaSmiParseError("expected a GPU index in the first column", line_no, line)
        lost = any("GPU is lost" in v for v in row)
        gpus.append(GpuInfo(
            index=index,
            name=values["name"].strip(),
            uuid=_value(values["uuid"], str, "uuid", line_no, line),
            temp_c=_value(values["temperature.gpu"], float, "temperature.gpu", line_no, line),
            util_pct=_value(values["utilization.gpu"], float, "utilization.gpu", line_no, line),
            memory_used_mb=_value(values["memory.used"], int, "memory.used", line_no, line),
            memory_total_mb=_value(values["memory.total"], int, "memory.total", line_no, line),
            power_w=_value(values["power.draw"], float, "power.draw", line_no, line),
            ecc_uncorrected=_value(values["ecc.errors.uncorrected.volatile.total"], int,
                                   "ecc.errors.uncorrected.volatile.total", line_no, line),
            lost=lost,
        ))
    return tuple(gpus)
