"""The launcher at K simulated SSH hosts against pdsh starting the same processes over the same sshd.

`python benchmarks/scale.py --hosts 4,16,64 --ranks 8` starts max(K) private sshd on 127.0.1.1 ...
(tests/e2e/sshd.py; one workdir per host) whose sessions run as on a stock server: one HOME for the
user whose ~/.bashrc runs the machine's real `pyenv init` (`login_home`), no SHLVL trick, so every
login reads it, as would any `bash -c` that does not opt out. For every K, with the stand-in workload
of tests/harness behind each host's `python` (one step line every --step-s seconds, until
stopped):

1. `refinenet-launch --cluster C --stage r1` (backend dynamic, no restarts): preflight (its
   `preflight passed` line, else job.json `created`), launch -> every rank's first step line in
   job.log; then, steady, the launcher's threads, fds and RSS from /proc, step lines per second in
   job.log against ranks / step-s; then kill -9 of one rank -> every process of the job gone.
2. the same launch again: launch -> every rank up; SIGINT -> every process of the job gone.
3. `pdsh -R ssh -f K -w host-001,...` running the same ranks (ssh with a generated ssh_config:
   the test key, each host's port and known_hosts) through the same sshd and HOME: pdsh start ->
   every rank's first step line.

For each of the three, the runs of ~/.bashrc it caused are counted (the HOME's startup trace). The first
launch's start is split into phases, from outside: launch -> every host agent running (their process
start times in /proc, found by the login HOME and the agent mode), -> `preflight passed` (the hosts'
shared state, host checks and preflight, through the agents), -> `job ...` (leases, job folder), ->
`attempt 1:` (the attempt's plan), -> every process started (job.json, the agents' clocks), -> every
rank's first step line in job.log (the ranks' own start-up).

"Gone" means no process carrying the job's REFINENET_JOB_ID tag (every host shares this kernel),
polled in /proc every 20 ms. Lines lost: step numbers missing between a rank's first and last
step line, in job.log and in rank_<r>.log. Every sshd, launcher and rank is cleaned up on exit,
Ctrl-C or SIGTERM. With `--fanout N` the cluster file gets `launch: {fanout: N}`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refinenet.metrics_log import process_start_time  # noqa: E402
from tests.harness import standin  # noqa: E402
from tests.harness.benchrun import load_line, raise_file_limit, run_in_folder  # noqa: E402
from tests.harness.clusters import cluster_file, ssh_host  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402
from tests.harness.hosts import (  # noqa: E402
    ClientKey,
    SshServer,
    login_home,
    start_servers,
    startup_trace,
    stop_servers,
)
from tests.harness.launched import LaunchedJob  # noqa: E402
from tests.harness.pdsh import PdshMissing, run_pdsh, stop_pdsh  # noqa: E402
from tests.harness.procs import gone_after, rank_pids, snapshot  # noqa: E402

#: The phases of a launch's start, in order, each ending at its mark (seconds from the launch).
PHASES = ("agents up", "checks, preflight", "leases, job folder", "plan", "processes started",
          "ranks' first step")


@dataclass
class Row:
    hosts: int
    ranks: int
    preflight_s: Optional[float] = None
    up_s: List[Optional[float]] = field(default_factory=list)
    pdsh_s: Optional[float] = None
    threads: Optional[int] = None
    fds: Optional[int] = None
    rss_mb: Optional[float] = None
    lines_per_s: Optional[float] = None
    expected_per_s: Optional[float] = None
    lost: int = 0
    kill9_gone_s: Optional[float] = None
    sigint_gone_s: Optional[float] = None
    bashrc_runs: List[int] = field(default_factory=list)
    phases: Dict[str, Optional[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def proc_usage(pid: int):
    """(threads, open fds, RSS in MB) of a live process."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return threads, fds, rss


def agents_started(home: Path) -> List[float]:
    """Start times (epoch s) of the live host agents whose login HOME is `home`."""
    found = []
    marker = f"HOME={home}".encode() + b"\0"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue
        if b"\0" + marker in env and b"agent" in argv and any(b"hostside import program" in a for a in argv):
            started = process_start_time(entry)
            if started is not None:
                found.append(started)
    return found


def start_phases(job: LaunchedJob, up_s: float, agents_up_s: Optional[float]) -> Dict[str, Optional[float]]:
    """Seconds of each phase of the launch's start (PHASES), from marks seen outside the launcher."""
    started = None
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        started = max(p["started"] for p in job.record()["attempts"][0]["processes"]) - job.started_wall
    marks: List[Tuple[str, Optional[float]]] = [
        ("agents up", agents_up_s), ("checks, preflight", job.stderr_time("preflight passed")),
        ("leases, job folder", job.stderr_time(f"job {job.job_id} (")),
        ("plan", job.stderr_time("attempt 1:")), ("processes started", started), ("ranks' first step", up_s)]
    phases: Dict[str, Optional[float]] = {}
    previous: Optional[float] = 0.0
    for name, at in marks:
        phases[name] = None if at is None or previous is None else at - previous
        previous = at
    return phases


def rank_log_gaps(job: LaunchedJob, world: int) -> int:
    lost = 0
    for rank in range(world):
        path = job.job_dir / "logs" / f"rank_{rank}.log"
        steps: List[int] = []
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("=== attempt "):
                    lost += _gaps(steps)
                    steps = []
                steps.extend(standin.step_numbers([line]))
        lost += _gaps(steps)
    return lost


def _gaps(steps: List[int]) -> int:
    return max(steps) - min(steps) + 1 - len(set(steps)) if steps else 0


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.env = child_env()
        self.servers: List[SshServer] = []
        self.jobs: List[LaunchedJob] = []
        self.pdsh_tags: List[str] = []
        self.python = standin.install(root / "standin")
        self.key = ClientKey.create(root / "client")
        self.home = login_home(root / "home")

    def start_servers(self, count: int) -> None:
        started = time.monotonic()
        self.servers = start_servers(self.root / "hosts", self.key, count, login_home=self.home)
        print(f"{count} sshd up in {time.monotonic() - started:.1f} s", flush=True)

    def bashrc_runs(self) -> int:
        return sum(1 for name, _, _ in startup_trace(self.home) if name == "bashrc")

    def launch(self, hosts: int, job_id: str) -> LaunchedJob:
        extra = {"launch": {"fanout": self.args.fanout}} if self.args.fanout else {}
        path = cluster_file(self.root / "clusters" / job_id / "cluster.yaml",
                            [ssh_host(s.host(), ranks=self.args.ranks, python=self.python)
                             for s in self.servers[:hosts]],
                            name=job_id, env=standin.steps_env(self.args.step_s), lists=("train.lst",),
                            timeouts={"cluster_s": 120, "heartbeat_s": 30}, **extra)
        job = LaunchedJob(path, self.root / "runs", job_id, self.env)
        self.jobs.append(job)
        return job

    def up_timeout(self, hosts: int) -> float:
        return max(120.0, 8.0 * hosts * self.args.ranks / 8)

    def measure(self, hosts: int) -> Row:
        ranks = self.args.ranks
        world = hosts * ranks
        row = Row(hosts, world)
        tag = f"scale-{hosts}x{ranks}"

        runs_before = self.bashrc_runs()
        job = self.launch(hosts, f"{tag}-a")
        row.up_s.append(job.ranks_up(world, timeout=self.up_timeout(hosts)))
        row.bashrc_runs.append(self.bashrc_runs() - runs_before)
        agents = agents_started(self.home)
        if len(agents) != hosts:
            row.notes.append(f"{len(agents)} host agents found in /proc, {hosts} expected")
        row.phases = start_phases(job, row.up_s[-1], max(agents) - job.started_wall if agents else None)
        row.preflight_s = job.stderr_time("preflight passed")
        if row.preflight_s is None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                row.preflight_s = job.record()["created"] - job.started_wall
                row.notes.append("preflight from job.json created")
        row.threads, row.fds, row.rss_mb = proc_usage(job.proc.pid)
        row.expected_per_s = world / self.args.step_s
        job.follow()
        before, start = self.step_lines(job), time.monotonic()
        end = start + self.args.steady_s
        while time.monotonic() < end:
            time.sleep(0.1)
            job.follow()
        row.lines_per_s = (self.step_lines(job) - before) / (time.monotonic() - start)
        threads, fds, rss = proc_usage(job.proc.pid)
        row.threads, row.fds, row.rss_mb = max(row.threads, threads), max(row.fds, fds), max(row.rss_mb, rss)
        procs = snapshot(job.job_id)
        pids = rank_pids(job.job_id)
        victim = pids.get(world // 2, next(iter(pids.values()), None))
        if victim is None:
            raise RuntimeError(f"{job.job_id}: no rank process found to kill")
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        row.kill9_gone_s, left = gone_after(procs, killed, self.args.gone_timeout_s)
        if left:
            row.notes.append(f"kill -9: {len(left)} processes alive after {self.args.gone_timeout_s} s")
        job.wait(max(60.0, self.args.gone_timeout_s))
        job.follow()
        row.lost += job.step_gaps(1) + rank_log_gaps(job, world)
        job.close()

        job = self.launch(hosts, f"{tag}-b")
        row.up_s.append(job.ranks_up(world, timeout=self.up_timeout(hosts)))
        time.sleep(min(2.0, self.args.steady_s))
        procs = snapshot(job.job_id)
        sent = time.monotonic()
        job.kill(signal.SIGINT)
        row.sigint_gone_s, left = gone_after(procs, sent, self.args.gone_timeout_s)
        if left:
            row.notes.append(f"SIGINT: {len(left)} processes alive after {self.args.gone_timeout_s} s")
        code = job.wait(max(60.0, self.args.gone_timeout_s))
        if code != 1:
            row.notes.append(f"launcher exited {code} after SIGINT")
        job.follow()
        row.lost += job.step_gaps(1) + rank_log_gaps(job, world)
        job.close()

        if not self.args.no_pdsh:
            runs_before = self.bashrc_runs()
            row.pdsh_s = self.run_pdsh(hosts, f"pdsh-{hosts}x{ranks}")
            row.bashrc_runs.append(self.bashrc_runs() - runs_before)
        return row

    @staticmethod
    def step_lines(job: LaunchedJob) -> int:
        return sum(len(s) for s in job.steps.get(job.attempt, {}).values())

    def run_pdsh(self, hosts: int, tag: str) -> Optional[float]:
        """Seconds from pdsh's start to every rank's first step line on its stdout."""
        self.pdsh_tags.append(tag)
        try:
            return run_pdsh(self.servers[:hosts], self.args.ranks, self.python, self.args.step_s, self.root,
                            tag, self.env, self.up_timeout(hosts))
        except PdshMissing as exc:
            print(f"{exc}: skipped", flush=True)
        except RuntimeError as exc:
            print(exc, flush=True)
        return None

    def stop_pdsh(self) -> None:
        for tag in self.pdsh_tags:
            stop_pdsh(None, tag)

    def cleanup(self) -> None:
        for job in self.jobs:
            with contextlib.suppress(Exception):
                if job.proc.poll() is None:
                    job.kill(signal.SIGINT)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        job.proc.wait(10)
                job.close()
        with contextlib.suppress(Exception):
            self.stop_pdsh()
        stop_servers(self.servers)
        self.servers = []


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: List[Row]) -> str:
    head = ("| hosts | ranks | preflight s | all ranks up s (two runs) | pdsh s | launcher / pdsh "
            "| ~/.bashrc runs (launch / pdsh) | threads | fds | RSS MB | lines/s (expected) | lines lost "
            "| kill -9 -> all gone s | SIGINT -> all gone s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        ups = " / ".join(fmt(u) for u in r.up_s)
        best = min((u for u in r.up_s if u is not None), default=None)
        ratio = f"{best / r.pdsh_s:.1f}x" if best is not None and r.pdsh_s else "-"
        rate = f"{fmt(r.lines_per_s)} ({fmt(r.expected_per_s, 0)})"
        runs = " / ".join(str(n) for n in r.bashrc_runs) or "-"
        lines.append(f"| {r.hosts} | {r.ranks} | {fmt(r.preflight_s)} | {ups} | {fmt(r.pdsh_s)} | {ratio} "
                     f"| {runs} | {r.threads} | {r.fds} | {fmt(r.rss_mb, 0)} | {rate} | {r.lost} "
                     f"| {fmt(r.kill9_gone_s, 2)} | {fmt(r.sigint_gone_s, 2)} |")
    phases = ["", "| hosts | " + " | ".join(f"{p} s" for p in PHASES) + " | all ranks up s | pdsh s |",
              "|" + "---|" * (len(PHASES) + 3)]
    for r in rows:
        phases.append(f"| {r.hosts} | " + " | ".join(fmt(r.phases.get(p), 2) for p in PHASES)
                      + f" | {fmt(r.up_s[0] if r.up_s else None, 2)} | {fmt(r.pdsh_s, 2)} |")
    notes = [f"- {r.hosts} hosts: {n}" for r in rows for n in r.notes]
    return "\n".join(lines + phases + notes)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="4,16,64", help="comma-separated host counts (default 4,16,64)")
    parser.add_argument("--ranks", type=int, default=8, help="ranks per host (default 8)")
    parser.add_argument("--step-s", type=float, default=0.5, help="seconds between step lines (default 0.5)")
    parser.add_argument("--steady-s", type=float, default=5.0, help="seconds of steady-state measuring")
    parser.add_argument("--gone-timeout-s", type=float, default=60.0, help="give up waiting for processes")
    parser.add_argument("--fanout", type=int, help="set launch.fanout in the cluster file")
    parser.add_argument("--no-pdsh", action="store_true", help="skip the pdsh comparison")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, job records)")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.hosts.split(",") if k.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 254 or args.ranks < 1:
        parser.error("--hosts takes 1..254 hosts, --ranks at least 1")
    limit = raise_file_limit(max(4096, 64 * max(sizes) * args.ranks))
    print(f"file limit {limit}; hosts {sizes}, {args.ranks} ranks per host, "
          f"a step line every {args.step_s} s; load average {os.getloadavg()[0]:.1f} at the start",
          flush=True)
    rows: List[Row] = []

    def measure(bench: Bench) -> None:
        bench.start_servers(max(sizes))
        for hosts in sizes:
            started = time.monotonic()
            row = bench.measure(hosts)
            rows.append(row)
            print(f"{hosts} hosts x {args.ranks} ranks measured in {time.monotonic() - started:.0f} s",
                  flush=True)
            print(table([row]), flush=True)

    interrupted = run_in_folder("refinenet-scale-", args.keep, lambda root: Bench(args, root), measure,
                                Bench.cleanup)
    if interrupted is not None:
        return interrupted
    print("\n" + table(rows))
    print("\n" + load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
