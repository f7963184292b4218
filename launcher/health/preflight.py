"""The gate before a launch: every host reachable, its workdir writable, room for checkpoints, its
devices healthy, and the master port free on the master host. Nothing is written or started.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from launcher.errors import LauncherError
from launcher.health.collect import PROBE_TIMEOUT_S, dir_checks, output_dir, parallel_map, read_devices
from launcher.health.probes import read_host
from launcher.health.verdicts import NO_THRESHOLDS, HealthThresholds, Verdict, format_table
from launcher.transport.base import HostError, HostInfo

__all__ = ["PreflightCheck", "PreflightReport", "PreflightFailed", "run_preflight", "host_checks",
           "launch_check", "LaunchInputs", "other_job_checkpoints"]


@dataclass(frozen=True)
class PreflightCheck:
    host: str
    check: str
    ok: bool
    detail: str = ""


class PreflightFailed(LauncherError):
    """The preflight gate refused the launch; names each failing host and cause. Exit code 2."""

    def __init__(self, report: PreflightReport):
        causes = "; ".join(f"{c.host}: {c.check}: {c.detail}" for c in report.failures)
        super().__init__(f"preflight failed: {causes}")
        self.report = report

    @property
    def hosts(self) -> List[str]:
        return sorted({c.host for c in self.report.failures})


@dataclass(frozen=True)
class PreflightReport:
    checks: Tuple[PreflightCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> Tuple[PreflightCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def render(self) -> str:
        rows = [("HOST", "CHECK", "RESULT", "DETAIL")]
        rows += [(c.host, c.check, "ok" if c.ok else "FAILED", c.detail) for c in self.checks]
        verdict = "preflight passed" if self.ok else f"preflight FAILED ({len(self.failures)} problem(s))"
        return "\n".join(format_table(rows) + [verdict])

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise PreflightFailed(self)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def host_checks(spec, host, transport, thresholds: HealthThresholds = NO_THRESHOLDS,
                timeout: float = PROBE_TIMEOUT_S, info=None, sample=None, leased=None
                ) -> List[PreflightCheck]:
    """The preflight checks of one host; `info` and `sample` (gathered already, e.g. by
    `launch_check`) save the probe and the host sample. With `leased` (the devices live leases of the
    host cover), a device of the job running a process outside every lease fails the check, unless
    `sharing.ignore_foreign_processes`."""
    def check(name: str, ok: bool, detail: str = "") -> PreflightCheck:
        return PreflightCheck(host.name, name, ok, detail)

    if transport is None:
        return [check("reachable", False, "no connection to the host")]
    if info is None:
        try:
            info = transport.probe(host.python)
        except HostError as exc:
            return [check("reachable", False, exc.cause)]
    checks = [check("reachable", True, f"{info.hostname}, python {info.python_version}")]

    master_port: Optional[int] = None
    if host.name == spec.master.host and isinstance(spec.master.port, int):
        master_port = spec.master.port
    outdir = output_dir(spec, host)
    try:
        if sample is None:
            sample = read_host(transport, host.python, dirs=[host.workdir, outdir], port=master_port,
                               timeout=timeout)
    except HostError as exc:
        checks.append(check("host sample", False, exc.cause))
    else:
        checks += [check(name, ok, detail) for name, ok, detail in
                   dir_checks(sample, host.workdir, outdir, spec.health.min_free_disk_gb)]
        if master_port is not None and sample.port is not None:
            if sample.port.free:
                checks.append(check("master port", True, f"port {master_port} is free"))
            else:
                checks.append(check("master port", False, f"port {master_port} cannot be bound on "
                                                          f"{host.name}: {sample.port.error}"))

    if spec.device != "cpu" and spec.health.check_devices:
        try:
            rows = read_devices(transport, host, spec.device, thresholds, timeout)
        except HostError as exc:
            checks.append(check("devices", False, exc.cause))
        else:
            def why(r) -> str:
                return f"device {r.device}: {'; '.join(r.reasons)}"

            bad = [why(r) for r in rows if r.verdict not in (Verdict.HEALTHY, Verdict.DEGRADED)]
            warned = [why(r) for r in rows if r.verdict == Verdict.DEGRADED]
            listed = ", ".join(str(r.device) for r in rows)
            if bad:
                checks.append(check("devices", False, "; ".join(bad)))
            else:
                checks.append(check("devices", True, f"{listed} healthy" +
                                    (f" (degraded: {'; '.join(warned)})" if warned else "")))
            if leased is not None and not spec.sharing.ignore_foreign_processes:
                checks.append(_foreign(check, rows, leased))
    return checks


@dataclass(frozen=True)
class LaunchInputs:
    """What a launch needs of one host beyond the preflight: `modules` python must find, input `files`,
    checkpoint folders `ckpt_dirs` that must hold no other job's checkpoints than `job_id`'s, commands
    `input_checks` that must exit 0 (the workload's own check of its inputs, e.g. that a list gives one
    global batch), and the devices of the host that live leases cover (`leased`: their processes are not
    foreign)."""

    modules: Tuple[str, ...] = ()
    files: Tuple[str, ...] = ()
    job_id: str = ""
    ckpt_dirs: Tuple[str, ...] = ()
    input_checks: Tuple[Tuple[str, ...], ...] = ()
    leased: Optional[frozenset] = None


def _foreign(check, rows, leased) -> PreflightCheck:
    """A check that no device of the job runs a process that no lease covers."""
    found = [f"device {r.device} runs pid {p.pid} ({p.name})" for r in rows if r.device not in leased
             for p in (r.reading.processes if r.reading is not None else ())]
    if found:
        return check("device processes", False, "; ".join(found) + ": outside any lease (stop it, or set "
                     "sharing.ignore_foreign_processes)")
    return check("device processes", True, "no process outside a lease")


def launch_check(spec, host, transport, inputs: LaunchInputs, thresholds: HealthThresholds = NO_THRESHOLDS,
                 timeout: float = PROBE_TIMEOUT_S) -> List[PreflightCheck]:
    """The host check before a launch, in one command on the host: python runs and finds the modules,
    the workdir is writable, the input files exist, no other job's checkpoints are where this one's go
    (`HostError` naming what is wrong); then the workload's input checks; and, unless `health.preflight`
    is off, the preflight checks (disk, master port, devices, foreign processes) from the same answer."""
    master_port = spec.master.port if host.name == spec.master.host and isinstance(spec.master.port, int) \
        else None
    facts = {"workdir": host.workdir, "modules": list(inputs.modules), "files": list(inputs.files),
             "ckpt_dirs": list(inputs.ckpt_dirs)}
    try:
        sample = read_host(transport, host.python, dirs=[host.workdir, output_dir(spec, host)],
                           port=master_port, timeout=timeout, facts=facts)
    except HostError as exc:
        raise HostError(host.name, exc.cause.replace("could not sample the host", "does not run")) from None
    found = dict(sample.facts or {})
    if found.get("missing"):
        listed = "; ".join(f"{name} ({why})" for name, why in sorted(found["missing"].items()))
        raise HostError(host.name, f"python {host.python!r} cannot import: {listed}")
    if found.get("not_writable"):
        raise HostError(host.name, f"cannot write in {host.workdir}: {found['not_writable']}")
    if found.get("absent"):
        raise HostError(host.name, f"input file(s) missing there: {', '.join(found['absent'])}")
    for folder, jobs in sorted((found.get("ckpt_jobs") or {}).items()):
        others = [j for j in jobs if j != inputs.job_id]
        if others:
            raise HostError(host.name, other_job_checkpoints(folder, others))
    for argv in inputs.input_checks:
        result = transport.exec(list(argv), cwd=host.workdir, timeout=timeout)
        if not result.ok:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            why = lines[-1] if lines else f"exit {result.returncode}"
            raise HostError(host.name, f"the inputs do not fit: {why}")
    if not spec.health.preflight:
        return []
    info = HostInfo(host=host.name, hostname=sample.hostname, python=str(found.get("python", host.python)),
                    python_version=str(found.get("version", "")))
    return host_checks(spec, host, transport, thresholds, timeout, info=info, sample=sample,
                       leased=inputs.leased)


def other_job_checkpoints(folder: str, jobs: Sequence[str]) -> str:
    """Why a launch may not write into `folder`, and the two ways on."""
    named = [j for j in jobs if j]
    whose = f"job {', '.join(named)}" if named else "a job that did not record its id"
    resume = f"`refinenet-launch resume {named[0]}`" if named else "resuming that job"
    return (f"{folder} holds checkpoints of {whose}: continue it with {resume}, or start afresh into "
            f"another folder (e.g. --override job.output_dir=NEW)")


def run_preflight(spec, transports: Mapping[str, object], thresholds: HealthThresholds = NO_THRESHOLDS,
                  *, unreachable: Optional[Mapping[str, str]] = None,
                  timeout: float = PROBE_TIMEOUT_S) -> PreflightReport:
    """Check every host of `spec` in parallel; `unreachable` names hosts whose transport failed to open."""
    down = dict(unreachable or {})

    def one(host) -> Sequence[PreflightCheck]:
        if host.name in down:
            return [PreflightCheck(host.name, "reachable", False, down[host.name])]
        return host_checks(spec, host, transports.get(host.name), thresholds, timeout)

    return PreflightReport(tuple(c for checks in parallel_map(one, list(spec.hosts)) for c in checks))
