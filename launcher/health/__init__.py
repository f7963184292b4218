"""Device and host health: npu-smi / nvidia-smi / host probes, verdicts, the preflight gate, run-time samples.

Everything reaches a host through its transport, so the launcher may run on another machine.
"""
from launcher.health.collect import check_cluster, check_host, output_dir
from launcher.health.monitor import HealthFailure, HealthMonitor
from launcher.health.preflight import PreflightCheck, PreflightFailed, PreflightReport, run_preflight
from launcher.health.probes import DeviceReading, NpuSmiProbe, NvidiaSmiProbe, ProbeError, ToolNotFound
from launcher.health.verdicts import ClusterHealth, DeviceRow, HealthReport, HealthThresholds, Verdict

__all__ = ["check_cluster", "check_host", "output_dir", "HealthFailure", "HealthMonitor", "PreflightCheck",
           "PreflightFailed", "PreflightReport", "run_preflight", "DeviceReading", "NpuSmiProbe",
           "NvidiaSmiProbe", "ProbeError", "ToolNotFound", "ClusterHealth", "DeviceRow", "HealthReport",
           "HealthThresholds", "Verdict"]
