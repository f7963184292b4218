"""Probes that read a host through its transport: the device tool (npu-smi, nvidia-smi) and `HOST_SCRIPT`.

Device readings are keyed by the device id the cluster file uses: for Ascend the `Device` (logic id)
column where the layout has one, else `Phy-ID`, else the NPU id of single-chip NPUs; for GPUs the
nvidia-smi index.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from launcher.health.host import HostSample, host_argv, parse_host_sample
from launcher.health.npu_smi import (
    NpuChip,
    NpuSmiInfo,
    NpuSmiParseError,
    parse_npu_smi_health,
    parse_npu_smi_info,
)
from launcher.health.nvidia_smi import GpuInfo, NvidiaSmiParseError, parse_nvidia_smi_csv, query_args
from launcher.transport.base import HostError

__all__ = ["ToolNotFound", "ProbeError", "DeviceProcess", "DeviceReading", "NpuSmiProbe", "NvidiaSmiProbe",
           "device_probe", "run_tool", "npu_devices", "npu_readings", "gpu_readings", "read_host",
           "TOOL_DIRS"]

#: Where the device tools live when a non-login shell's PATH lacks them.
TOOL_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
NOT_FOUND = 127

# `$0` is the tool, `$@` its arguments: user values are never part of the script.
_TOOL_SCRIPT = ('PATH="${PATH:+$PATH:}' + ":".join(TOOL_DIRS) + '"; export PATH; '
                'command -v "$0" >/dev/null 2>&1 || exit 127; exec "$0" "$@"')


class ToolNotFound(HostError):
    """The device tool is not installed (or not on PATH) on the host."""

    def __init__(self, host: str, tool: str):
        super().__init__(host, f"{tool}: tool not found (not on PATH nor in {', '.join(TOOL_DIRS)})")
        self.tool = tool


class ProbeError(HostError):
    """A probe ran but failed, or its output was not understood."""


@dataclass(frozen=True)
class DeviceProcess:
    pid: int
    name: str
    memory_mb: Optional[int] = None


@dataclass(frozen=True)
class DeviceReading:
    """One device as its tool reports it, in the same shape for NPUs and GPUs.

    `health` is the tool's own word (npu-smi: OK/Warning/Alarm/Critical/UNKNOWN; GPUs: OK or LOST);
    memory is HBM where the device reports it. `detail` holds the error code of a non-OK chip.
    """

    device: int
    label: str
    name: str
    health: str
    temp_c: Optional[float] = None
    power_w: Optional[float] = None
    util_pct: Optional[float] = None
    memory_used_mb: Optional[int] = None
    memory_total_mb: Optional[int] = None
    bus_id: Optional[str] = None
    ecc_errors: Optional[int] = None
    detail: str = ""
    processes: Tuple[DeviceProcess, ...] = ()


def run_tool(transport, tool: str, args: Sequence[str], timeout: float = 60.0) -> str:
    """Stdout of `tool args...` on the transport's host; `ToolNotFound` or `ProbeError` otherwise."""
    result = transport.exec(["/bin/sh", "-c", _TOOL_SCRIPT, tool, *args], timeout=timeout)
    if result.returncode == NOT_FOUND and not result.stdout.strip():
        raise ToolNotFound(transport.host, tool)
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        why = lines[-1] if lines else "no output"
        raise ProbeError(transport.host, f"{tool} {' '.join(args)} failed (exit {result.returncode}): {why}")
    return result.stdout


def npu_devices(info: NpuSmiInfo) -> Dict[int, NpuChip]:
    """Chips keyed by device id: the logic id, else the Phy-ID, else the NPU id of single-chip NPUs."""
    chips_per_npu: Dict[int, int] = {}
    for chip in info.chips:
        chips_per_npu[chip.npu_id] = chips_per_npu.get(chip.npu_id, 0) + 1
    devices: Dict[int, NpuChip] = {}
    for chip in info.chips:
        if chip.logic_id is not None:
            devices[chip.logic_id] = chip
        elif chip.phy_id is not None:
            devices[chip.phy_id] = chip
        elif chips_per_npu[chip.npu_id] == 1:
            devices[chip.npu_id] = chip
    return devices


def npu_readings(info: NpuSmiInfo) -> Dict[int, DeviceReading]:
    """Readings keyed by device id (see `npu_devices`)."""
    multi = any(c.chip_id != 0 or c.phy_id is not None for c in info.chips)
    readings: Dict[int, DeviceReading] = {}
    for device, chip in npu_devices(info).items():
        memory = chip.hbm_mb if chip.hbm_mb is not None and chip.hbm_mb.total else chip.memory_mb
        readings[device] = DeviceReading(
            device=device, label=f"npu {chip.npu_id} chip {chip.chip_id}" if multi else f"npu {chip.npu_id}",
            name=chip.name, health=chip.health, temp_c=chip.temp_c, power_w=chip.power_w,
            util_pct=chip.aicore_pct, memory_used_mb=memory.used if memory else None,
            memory_total_mb=memory.total if memory else None, bus_id=chip.bus_id,
            processes=tuple(DeviceProcess(p.pid, p.name, p.memory_mb)
                            for p in info.processes_on(chip.npu_id, chip.chip_id)))
    return readings


def gpu_readings(gpus: Sequence[GpuInfo]) -> Dict[int, DeviceReading]:
    return {g.index: DeviceReading(
        device=g.index, label=f"gpu {g.index}", name=g.name, health="LOST" if g.lost else "OK",
        temp_c=g.temp_c, power_w=g.power_w, util_pct=g.util_pct, memory_used_mb=g.memory_used_mb,
        memory_total_mb=g.memory_total_mb, bus_id=g.uuid, ecc_errors=g.ecc_uncorrected) for g in gpus}


class NpuSmiProbe:
    """Reads `npu-smi info`; for each chip not OK also `npu-smi info -t health` for its error code."""

    tool = "npu-smi"
    args: Tuple[str, ...] = ("info",)

    def parse(self, host: str, text: str) -> Dict[int, DeviceReading]:
        """Readings from the output of `npu-smi info` (without the error codes of chips not OK)."""
        try:
            return npu_readings(parse_npu_smi_info(text))
        except NpuSmiParseError as exc:
            raise ProbeError(host, str(exc)) from None

    def read(self, transport, timeout: float = 60.0) -> Dict[int, DeviceReading]:
        text = run_tool(transport, self.tool, list(self.args), timeout)
        readings = self.parse(transport.host, text)
        chips = npu_devices(parse_npu_smi_info(text))
        for device, reading in list(readings.items()):
            if reading.health.upper() != "OK":
                readings[device] = _with_health_detail(transport, reading, chips[device], timeout)
        return readings


def _with_health_detail(transport, reading: DeviceReading, chip: NpuChip, timeout: float) -> DeviceReading:
    """The reading with the chip's error code from `npu-smi info -t health`, when it gives one."""
    try:
        text = run_tool(transport, NpuSmiProbe.tool,
                        ["info", "-t", "health", "-i", str(chip.npu_id), "-c", str(chip.chip_id)], timeout)
        records = parse_npu_smi_health(text)
    except (HostError, NpuSmiParseError):
        return reading
    parts = [r.error_code + (f" ({r.error_info})" if r.error_info else "") for r in records if r.error_code]
    return dataclasses.replace(reading, detail="error code " + ", ".join(parts)) if parts else reading


class NvidiaSmiProbe:
    """Reads `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`."""

    tool = "nvidia-smi"
    args: Tuple[str, ...] = tuple(query_args())

    def parse(self, host: str, text: str) -> Dict[int, DeviceReading]:
        """Readings from the output of the query (`args`)."""
        try:
            return gpu_readings(parse_nvidia_smi_csv(text))
        except NvidiaSmiParseError as exc:
            raise ProbeError(host, str(exc)) from None

    def read(self, transport, timeout: float = 60.0) -> Dict[int, DeviceReading]:
        return self.parse(transport.host, run_tool(transport, self.tool, list(self.args), timeout))


def device_probe(device: str):
    """The probe for a cluster's device kind; None for cpu."""
    return {"ascend": NpuSmiProbe, "gpu": NvidiaSmiProbe}.get(device, lambda: None)()


def read_host(transport, python: str, *, dirs: Sequence[str] = (), pids: Sequence[int] = (),
              port: Optional[int] = None, timeout: float = 60.0, facts=None) -> HostSample:
    """Run `HOST_SCRIPT` with the host's python; `ProbeError` naming the host when it gives no answer."""
    result = transport.exec(host_argv(python, dirs=dirs, pids=pids, port=port, facts=facts), timeout=timeout)
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        why = lines[-1] if lines else f"exit code {result.returncode}"
        raise ProbeError(transport.host, f"python {python!r} could not sample the host: {why}")
    try:
        return parse_host_sample(result.stdout)
    except ValueError as exc:
        raise ProbeError(transport.host, str(exc)) from None
