"""What leases add to a launch at scale, and the whole launch against pdsh, on hosts whose logins read a
pyenv ~/.bashrc.

`python benchmarks/leases.py --hosts 64 --ranks 8 --repeat 3` starts K private sshd on 127.0.1.1 ...
(tests/e2e/sshd.py) whose sessions run as on a stock server: one HOME whose ~/.bashrc runs the machine's
real `pyenv init` (`login_home`), so every login reads it. Every host is a cpu host with `slots: R` (so
a launch leases R slots there) and its own state directory, running R ranks of the stand-in workload of
tests/harness (backend dynamic, one step line every --step-s seconds, until stopped). Each round runs,
in alternating order, the launch with leases (`sharing.leases: true`, the default; no --wait) and the
same launch with `sharing.leases: false`, then pdsh starting the same ranks through the same sshd and
HOME (tests/harness/pdsh.py).

Per launch: launcher start -> `preflight passed`; `preflight passed` -> the `job ID (DIR)` line, which
is the leases (taken on every host) and then the plan and the job directory, the same in both modes; and
launcher start -> every rank's first step line in job.log. While the leased job runs, every host's
state must hold its lease of R slots; after SIGINT every process of the job is gone and no lease is
left. Reported: each launch, then medians over the rounds: the leases' cost (median lease phase with
leases minus without) and the launch with leases against pdsh (median every-rank-up over median pdsh).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.hostside import hoststate  # noqa: E402
from tests.harness import standin  # noqa: E402
from tests.harness.benchrun import load_line, raise_file_limit, run_in_folder  # noqa: E402
from tests.harness.clusters import cluster_file, ssh_host  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402
from tests.harness.hosts import ClientKey, login_home, start_servers, startup_trace, stop_servers  # noqa: E402
from tests.harness.launched import LaunchedJob  # noqa: E402
from tests.harness.pdsh import run_pdsh, stop_pdsh  # noqa: E402
from tests.harness.procs import gone_after, snapshot  # noqa: E402

GOAL_LEASES_S = 0.5
GOAL_PDSH_RATIO = 1.0


@dataclass
class Launch:
    round: int
    leases: bool
    preflight_s: Optional[float]
    lease_phase_s: Optional[float]
    up_s: float
    gone_s: Optional[float]
    bashrc_runs: int
    held: str


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.env = child_env()
        self.python = standin.install(root / "standin")
        self.key = ClientKey.create(root / "client")
        self.home = login_home(root / "home")
        self.servers = []
        self.jobs: List[LaunchedJob] = []
        self.tags: List[str] = []

    def start(self) -> None:
        began = time.monotonic()
        self.servers = start_servers(self.root / "hosts", self.key, self.args.hosts, login_home=self.home)
        print(f"{self.args.hosts} sshd up in {time.monotonic() - began:.1f} s", flush=True)

    def state_dir(self, name: str) -> Path:
        return self.root / "state" / name

    def bashrc_runs(self) -> int:
        return sum(1 for name, _, _ in startup_trace(self.home) if name == "bashrc")

    def cluster(self, job_id: str, leases: bool) -> Path:
        ranks = self.args.ranks
        hosts = [ssh_host(s.host(), ranks=ranks, python=self.python, slots=ranks,
                          state_dir=str(self.state_dir(s.name))) for s in self.servers]
        return cluster_file(self.root / "clusters" / job_id / "cluster.yaml", hosts, name=job_id,
                            env=standin.steps_env(self.args.step_s), lists=("train.lst",),
                            timeouts={"cluster_s": 120, "heartbeat_s": 30}, sharing={"leases": leases})

    def held(self, job_id: str) -> List[int]:
        """Slots of `job_id`'s live leases on each host."""
        return [sum(h["slots"] for h in hoststate.snapshot(str(self.state_dir(s.name)))["leases"]
                    if h["job"] == job_id) for s in self.servers]

    def launch(self, number: int, leases: bool) -> Launch:
        job_id = f"leases-{'on' if leases else 'off'}-{number}"
        world = self.args.hosts * self.args.ranks
        runs_before = self.bashrc_runs()
        job = LaunchedJob(self.cluster(job_id, leases), self.root / "runs", job_id, self.env)
        self.jobs.append(job)
        up = job.ranks_up(world, timeout=max(180.0, world / 2))
        runs = self.bashrc_runs() - runs_before
        preflight = job.stderr_time("preflight passed")
        job_line = job.stderr_time(f"job {job_id} (")
        phase = job_line - preflight if preflight is not None and job_line is not None else None
        slots = self.held(job_id)
        if leases and slots != [self.args.ranks] * self.args.hosts:
            raise RuntimeError(f"{job_id}: leases held per host {slots}, not {self.args.ranks} on each")
        if not leases and any(slots):
            raise RuntimeError(f"{job_id}: leases taken with sharing.leases false: {slots}")
        procs = snapshot(job_id)
        sent = time.monotonic()
        job.kill(signal.SIGINT)
        gone, left = gone_after(procs, sent, 60.0)
        job.wait(60)
        left_held = self.held(job_id)
        if any(left_held) or left:
            raise RuntimeError(f"{job_id}: after SIGINT {len(left)} processes and leases {left_held} left")
        job.close()
        held = f"{sum(slots)} slots on {sum(1 for s in slots if s)} hosts" if leases else "-"
        return Launch(number, leases, preflight, phase, up, gone, runs, held)

    def pdsh(self, number: int) -> Optional[float]:
        tag = f"pdsh-leases-{number}"
        self.tags.append(tag)
        timeout = max(180.0, self.args.hosts * self.args.ranks / 2)
        return run_pdsh(self.servers, self.args.ranks, self.python, self.args.step_s, self.root, tag,
                        self.env, timeout)

    def cleanup(self) -> None:
        for job in self.jobs:
            with contextlib.suppress(Exception):
                job.close()
        for tag in self.tags:
            with contextlib.suppress(Exception):
                stop_pdsh(None, tag)
        stop_servers(self.servers)


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(launches: List[Launch], pdsh: List[float], args: argparse.Namespace) -> str:
    lines = ["| round | leases | preflight s | preflight -> job line s (leases, plan, job dir) "
             "| all ranks up s | SIGINT -> all gone s | ~/.bashrc runs | leased |", "|" + "---|" * 8]
    for x in launches:
        lines.append(f"| {x.round} | {'on' if x.leases else 'off'} | {fmt(x.preflight_s)} | "
                     f"{fmt(x.lease_phase_s)} | {fmt(x.up_s)} | {fmt(x.gone_s)} | {x.bashrc_runs} "
                     f"| {x.held} |")
    on = [x for x in launches if x.leases]
    off = [x for x in launches if not x.leases]
    phase_on, phase_off = median(x.lease_phase_s for x in on), median(x.lease_phase_s for x in off)
    up_on, up_off = median(x.up_s for x in on), median(x.up_s for x in off)
    pdsh_s = median(pdsh)
    added = phase_on - phase_off if phase_on is not None and phase_off is not None else None
    ratio = up_on / pdsh_s if up_on is not None and pdsh_s else None
    lines += ["", f"{args.hosts} hosts x {args.ranks} ranks, medians of {len(on)} round(s):",
              f"- preflight -> job line: {fmt(phase_on)} s with leases, {fmt(phase_off)} s without: "
              f"leases add {fmt(added)} s (goal <= {GOAL_LEASES_S} s)",
              f"- all ranks up: {fmt(up_on)} s with leases, {fmt(up_off)} s without (difference "
              f"{fmt(up_on - up_off if up_on is not None and up_off is not None else None)} s)",
              f"- pdsh: {' / '.join(fmt(p) for p in pdsh)} s, median {fmt(pdsh_s)} s; launch with leases "
              f"/ pdsh: {fmt(ratio)}x (goal <= {GOAL_PDSH_RATIO}x)"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=64, help="simulated hosts (default 64)")
    parser.add_argument("--ranks", type=int, default=8, help="ranks (and slots) per host (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--step-s", type=float, default=0.5, help="seconds between step lines (default 0.5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 254 or args.ranks < 1 or args.repeat < 1:
        parser.error("--hosts takes 1..254, --ranks and --repeat at least 1")
    raise_file_limit(max(4096, 64 * args.hosts * args.ranks))
    launches: List[Launch] = []
    pdsh: List[float] = []

    def measure(bench: Bench) -> None:
        bench.start()
        for number in range(1, args.repeat + 1):
            for leases in ((True, False) if number % 2 else (False, True)):
                launches.append(bench.launch(number, leases))
                print(report(launches[-1:], [], args).split("\n\n")[0].splitlines()[-1], flush=True)
            pdsh.append(bench.pdsh(number))
            print(f"pdsh round {number}: {pdsh[-1]:.2f} s", flush=True)

    interrupted = run_in_folder("refinenet-leases-", args.keep, lambda root: Bench(args, root), measure,
                                Bench.cleanup)
    if interrupted is not None:
        return interrupted
    print("\n" + report(launches, pdsh, args))
    print("\n" + load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
