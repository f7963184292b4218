"""Parsers for Ascend `npu-smi info` (the device table) and `npu-smi info -t health` (key: value blocks).

Layouts differ between npu-smi versions (legacy 910A without hugepages, 910B with a process table, A3
with two chips per NPU and a Phy-ID column), so columns are read by their header names, unknown
columns are kept in `extra`, and lines outside the table are ignored. Output that does not have the
expected shape raises `NpuSmiParseError` naming the line and what was expected there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.health.errors import ToolOutputError

__all__ = ["HEALTH_STATES", "NpuSmiParseError", "Usage", "NpuChip", "NpuProcess", "NpuSmiInfo", "NpuHealth",
           "parse_npu_smi_info", "parse_npu_smi_health"]

#: What npu-smi reports as a chip's health; UNKNOWN means the device is absent or not started.
HEALTH_STATES = ("OK", "Warning", "Alarm", "Critical", "UNKNOWN")

_NA = frozenset({"-", "NA", "N/A", ""})
_TOKEN = re.compile(r"[^\s/]+\s*/\s*[^\s/]+|\S+")
_USAGE = re.compile(r"(\d+)\s*/\s*(\d+)")
_VERSION = re.compile(r"npu-smi\s+(\S+)(?:\s+Version:\s*(\S+))?")
_CHIP_COLUMNS = frozenset({"NPU", "Name", "Chip", "Phy-ID", "Device", "Health", "Bus-Id", "Power(W)",
                           "Temp(C)", "AICore(%)", "Memory-Usage(MB)", "HBM-Usage(MB)",
                           "Hugepages-Usage(page)"})
_HEADER = "the header 'NPU Name | Health | Power(W) ...'"
_NO_PROCESSES = re.compile(r"No running processes found in NPU\s+(\d+)", re.IGNORECASE)


class NpuSmiParseError(ToolOutputError):
    """npu-smi output without the expected shape; names the line and what was expected."""

    tool = "npu-smi"


@dataclass(frozen=True)
class Usage:
    """`used / total` in the unit of its column (MB, or pages for hugepages)."""

    used: int
    total: int

    @property
    def fraction(self) -> Optional[float]:
        return self.used / self.total if self.total else None


@dataclass(frozen=True)
class NpuChip:
    """One chip row pair of the device table.

    `phy_id` / `logic_id` are set where the layout has a `Phy-ID` / `Device` column next to `Chip`.
    """

    npu_id: int
    chip_id: int
    name: str
    health: str
    phy_id: Optional[int] = None
    logic_id: Optional[int] = None
    bus_id: Optional[str] = None
    power_w: Optional[float] = None
    temp_c: Optional[float] = None
    aicore_pct: Optional[float] = None
    memory_mb: Optional[Usage] = None
    hbm_mb: Optional[Usage] = None
    hugepages: Optional[Usage] = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NpuProcess:
    """One row of the process table."""

    npu_id: int
    chip_id: int
    pid: int
    name: str
    memory_mb: Optional[int]
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NpuSmiInfo:
    """A parsed `npu-smi info` table."""

    tool_version: Optional[str]
    driver_version: Optional[str]
    chips: Tuple[NpuChip, ...]
    processes: Tuple[NpuProcess, ...] = ()

    def chip(self, npu_id: int, chip_id: int = 0) -> Optional[NpuChip]:
        return next((c for c in self.chips if c.npu_id == npu_id and c.chip_id == chip_id), None)

    def processes_on(self, npu_id: int, chip_id: int) -> Tuple[NpuProcess, ...]:
        return tuple(p for p in self.processes if p.npu_id == npu_id and p.chip_id == chip_id)


@dataclass(frozen=True)
class NpuHealth:
    """One chip's block of `npu-smi info -t health`; ids are None where the output does not name them."""

    health: str
    npu_id: Optional[int] = None
    chip_id: Optional[int] = None
    chip_name: Optional[str] = None
    error_code: Optional[str] = None
    error_info: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# `npu-smi info`


def _cells(line: str, line_no: int) -> List[str]:
    text = line.strip()
    if not text.endswith("|"):
        raise NpuSmiParseError("table line cut short: expected it to end with '|'", line_no, line)
    return [c.strip() for c in text[1:-1].split("|")]


def _number(value: str) -> Optional[float]:
    if value in _NA:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _integer(value: str, what: str, line_no: int, line: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise NpuSmiParseError(f"expected {what} (an integer), found {value!r}", line_no, line) from None


def _usage(value: str) -> Optional[Usage]:
    m = _USAGE.fullmatch(value)
    return Usage(int(m.group(1)), int(m.group(2))) if m else None


def _values(names: Sequence[str], cell: str, line_no: int, line: str) -> Dict[str, str]:
    tokens = _TOKEN.findall(cell)
    if len(tokens) != len(names):
        raise NpuSmiParseError(
            f"expected {len(names)} values for columns {' '.join(names)}, found {len(tokens)}", line_no, line)
    return {name: re.sub(r"\s+", "", tok) for name, tok in zip(names, tokens)}


@dataclass
class _Header:
    """Column names of the two header lines of the device table, per cell."""

    first: List[List[str]]
    second: List[List[str]]


def _header_names(cells: Sequence[str]) -> List[List[str]]:
    return [cell.split() for cell in cells]


def _chip_from_rows(header: _Header, a: Tuple[int, str], b: Tuple[int, str]) -> NpuChip:
    (a_no, a_line), (b_no, b_line) = a, b
    rows = ((_cells(a_line, a_no), header.first, a_no, a_line),
            (_cells(b_line, b_no), header.second, b_no, b_line))
    for cells, names, no, line in rows:
        if len(cells) != len(names):
            raise NpuSmiParseError(f"expected {len(names)} cells as in the header, found {len(cells)}",
                                   no, line)
    values: Dict[str, str] = {}
    for cells, names, no, line in rows:
        ident = cells[0].split(None, len(names[0]) - 1)
        if len(ident) != len(names[0]):
            raise NpuSmiParseError(f"expected {' and '.join(names[0])} in the first cell", no, line)
        values.update(zip(names[0], ident))
        for cell, cell_names in zip(cells[1:], names[1:]):
            values.update(_values(cell_names, cell, no, line))
    known = _CHIP_COLUMNS
    if "Health" not in values:
        raise NpuSmiParseError("expected a Health column in the header", a_no, a_line)
    phy, logic = values.get("Phy-ID"), values.get("Device")
    return NpuChip(
        npu_id=_integer(values.get("NPU", ""), "an NPU id", a_no, a_line),
        chip_id=_integer(values.get("Chip", ""), "a chip id", b_no, b_line),
        name=values.get("Name", ""),
        health=values["Health"],
        phy_id=None if phy is None or phy in _NA else _integer(phy, "a Phy-ID", b_no, b_line),
        logic_id=None if logic is None or logic in _NA else _integer(logic, "a device id", b_no, b_line),
        bus_id=None if values.get("Bus-Id", "-") in _NA else values["Bus-Id"],
        power_w=_number(values.get("Power(W)", "-")),
        temp_c=_number(values.get("Temp(C)", "-")),
        aicore_pct=_number(values.get("AICore(%)", "-")),
        memory_mb=_usage(values.get("Memory-Usage(MB)", "")),
        hbm_mb=_usage(values.get("HBM-Usage(MB)", "")),
        hugepages=_usage(values.get("Hugepages-Usage(page)", "")),
        extra=MappingProxyType({k: v for k, v in values.items() if k not in known}),
    )


def _process(names: Sequence[str], line_no: int, line: str) -> NpuProcess:
    cells = _cells(line, line_no)
    if len(cells) != len(names):
        raise NpuSmiParseError(f"expected {len(names)} cells like the process header, found {len(cells)}",
                               line_no, line)
    ids = cells[0].split()
    if len(ids) != 2:
        raise NpuSmiParseError("expected 'NPU Chip' ids in the first cell of a process row", line_no, line)
    values = dict(zip(names[1:], cells[1:]))
    memory = values.get("Process memory(MB)", "-")
    known = {"Process id", "Process name", "Process memory(MB)"}
    return NpuProcess(
        npu_id=_integer(ids[0], "an NPU id", line_no, line),
        chip_id=_integer(ids[1], "a chip id", line_no, line),
        pid=_integer(values.get("Process id", ""), "a process id", line_no, line),
        name=values.get("Process name", ""),
        memory_mb=None if memory in _NA else _integer(memory, "process memory in MB", line_no, line),
        extra=MappingProxyType({k: v for k, v in values.items() if k not in known}),
    )


def parse_npu_smi_info(text: str) -> NpuSmiInfo:
    """Parse the output of `npu-smi info`. Lines that are not part of the table are ignored."""
    tool_version = driver_version = None
    header_lines: List[List[str]] = []
    header: Optional[_Header] = None
    process_names: Optional[List[str]] = None
    pending: List[Tuple[int, str]] = []
    chips: List[NpuChip] = []
    processes: List[NpuProcess] = []

    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("+"):
            if pending:
                raise NpuSmiParseError("expected a second row (Chip, Bus-Id, ...) for this NPU row before "
                                       "the border", pending[0][0], pending[0][1])
            if header is None and len(header_lines) == 2 and line.startswith("+="):
                header = _Header(*header_lines)
            continue
        if not line.startswith("|"):
            continue
        cells = _cells(line, no)
        first = cells[0]
        if tool_version is None and header is None:
            m = _VERSION.search(line)
            if m:
                tool_version, driver_version = m.group(1), m.group(2)
                continue
        if header is None:
            if first.split()[:1] in (["NPU"], ["Chip"]):
                header_lines.append(_header_names(cells))
                if len(header_lines) > 2:
                    raise NpuSmiParseError("expected two header lines (NPU Name ..., Chip Bus-Id ...)",
                                           no, line)
                continue
            raise NpuSmiParseError(f"expected {_HEADER} before the first row", no, line)
        if any(c.startswith("Process id") for c in cells[1:]):
            process_names = [" ".join(c.split()) for c in cells]
            continue
        if process_names is not None:
            if _NO_PROCESSES.search(first):
                continue
            processes.append(_process(process_names, no, line))
            continue
        pending.append((no, line))
        if len(pending) == 2:
            chips.append(_chip_from_rows(header, pending[0], pending[1]))
            pending = []
    if pending:
        raise NpuSmiParseError("expected a second row (Chip, Bus-Id, ...) for the last NPU row",
                               pending[0][0], pending[0][1])
    if header is None:
        raise NpuSmiParseError(f"no device table found: expected {_HEADER} followed by a '+====' border")
    return NpuSmiInfo(tool_version, driver_version, tuple(chips), tuple(processes))


# ---------------------------------------------------------------------------------------------
# `npu-smi info -t health -i N [-c C]`

_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z ]*?)\s*:\s*(.*?)\s*$")


def _na(value: Optional[str]) -> Optional[str]:
    return None if value is None or value in _NA else value


def parse_npu_smi_health(text: str) -> Tuple[NpuHealth, ...]:
    """Parse `npu-smi info -t health`: one `NpuHealth` per block with a `Health Status` or `Health` field.

    Blocks are separated by blank lines, a new `Chip ID`, or a second health field; `NPU ID` carries
    over to the blocks after it.
    """
    records: List[NpuHealth] = []
    npu_id: Optional[int] = None
    current: Dict[str, str] = {}
    seen_any = False

    def flush() -> None:
        nonlocal current
        if "health" in current:
            records.append(NpuHealth(
                health=current["health"], npu_id=npu_id,
                chip_id=int(current["chip"]) if current.get("chip", "").isdigit() else None,
                chip_name=_na(current.get("name")), error_code=_na(current.get("code")),
                error_info=_na(current.get("info"))))
        current = {}

    for no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            flush()
            continue
        m = _KEY_VALUE.match(raw)
        if not m or raw.lstrip().startswith(("#", "npu-smi")):
            continue
        key, value = m.group(1).lower(), m.group(2)
        seen_any = True
        if key == "npu id":
            flush()
            npu_id = _integer(value, "an NPU id", no, raw)
        elif key == "chip id":
            if current:
                flush()
            current["chip"] = value
        elif key in ("health status", "health"):
            if "health" in current:
                flush()
            current["health"] = value
        elif key == "chip name":
            current["name"] = value
        elif key == "error code":
            current["code"] = value
        elif key == "error information":
            current["info"] = value
    flush()
    if not records:
        none = "" if seen_any else " (no 'key : value' lines at all)"
        raise NpuSmiParseError(f"expected a 'Health Status' or 'Health' field{none}")
    return tuple(records)
