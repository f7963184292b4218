"""`refinenet-launch cluster` at K simulated SSH hosts against the launch's preflight on the same hosts.

`python benchmarks/cluster_view.py --hosts 16,64` starts max(K) private sshd on 127.0.1.1 ...
(tests/e2e/sshd.py; one workdir and one state directory per host) whose sessions run as on a stock
server: one HOME whose ~/.bashrc runs the machine's real `pyenv init` (`login_home`), so every login
reads it. For every K, with a cluster file of K cpu hosts (`slots`, `--ranks` ranks each, the stand-in
workload of tests/harness behind each host's `python`):

1. `refinenet-launch cluster --cluster C --json`, `--repeat` times on idle hosts: wall time of the
   command (its Python start included), and the ~/.bashrc runs each caused (one login per host);
2. `refinenet-launch --cluster C -- COMMAND` (backend dynamic): seconds from the launcher's start to its
   `preflight passed` line (as benchmarks/scale.py times it), then every rank up;
3. `cluster` again, `--repeat` times, while that job runs (a lease on every host to show; the job's
   health monitor samples every host each `--health-s` seconds meanwhile, on the same CPUs);
4. SIGINT to the launch, every process of the job gone;

all of it `--launches` times. Printed: the medians, the ratios cluster / preflight, and the bashrc runs.
Every sshd and process is cleaned up on exit, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import standin  # noqa: E402
from tests.harness.benchrun import run_in_folder  # noqa: E402
from tests.harness.cli import launcher_argv  # noqa: E402
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
from tests.harness.procs import gone_within, kill_tagged  # noqa: E402


@dataclass
class Row:
    hosts: int
    ranks: int
    idle_s: List[float] = field(default_factory=list)
    busy_s: List[float] = field(default_factory=list)
    preflight_s: List[float] = field(default_factory=list)
    bashrc_per_view: List[int] = field(default_factory=list)
    leases_seen: int = 0
    notes: List[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.env = child_env()
        self.python = standin.install(root / "standin")
        self.key = ClientKey.create(root / "client")
        self.home = login_home(root / "home")
        self.servers: List[SshServer] = []
        self.jobs: List[LaunchedJob] = []

    def start_servers(self, count: int) -> None:
        started = time.monotonic()
        self.servers = start_servers(self.root / "hosts", self.key, count, login_home=self.home)
        print(f"{count} sshd up in {time.monotonic() - started:.1f} s", flush=True)

    def bashrc_runs(self) -> int:
        return sum(1 for name, _, _ in startup_trace(self.home) if name == "bashrc")

    def cluster_file(self, hosts: int) -> Path:
        entries = [ssh_host(s.host(), ranks=self.args.ranks, python=self.python, slots=self.args.ranks,
                            state_dir=str(self.root / "state" / s.name)) for s in self.servers[:hosts]]
        return cluster_file(self.root / "clusters" / f"c{hosts}.yaml", entries, name=f"view{hosts}", job={},
                            env=standin.steps_env(self.args.step_s), master={"port": "auto"},
                            health={"interval_s": self.args.health_s},
                            timeouts={"cluster_s": 120, "heartbeat_s": 30})

    def view(self, path: Path, row: Row, times: List[float], expect_leases: bool) -> None:
        before = self.bashrc_runs()
        started = time.monotonic()
        done = subprocess.run(launcher_argv("cluster", "--cluster", path, "--json"), env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        times.append(time.monotonic() - started)
        row.bashrc_per_view.append(self.bashrc_runs() - before)
        doc = json.loads(done.stdout)
        down = [h for h in doc["hosts"] if not h["ok"]]
        if done.returncode != 0 or down:
            why = (down[0]["unreachable"] or "; ".join(down[0]["problems"])) if down else ""
            row.notes.append(f"cluster exited {done.returncode}; {len(down)} host(s) not ok"
                             + (f", e.g. {down[0]['name']}: {why}" if down else ""))
        if expect_leases:
            row.leases_seen = sum(1 for h in doc["hosts"] if h["slots"] and h["slots"]["used"])

    def measure(self, hosts: int) -> Row:
        row = Row(hosts, hosts * self.args.ranks)
        path = self.cluster_file(hosts)
        for n in range(self.args.launches):
            for _ in range(self.args.repeat):
                self.view(path, row, row.idle_s, expect_leases=False)
            tag = f"view-{hosts}-{n}"
            job = LaunchedJob(path, self.root / "runs", tag, self.env, "--", self.python, "-m",
                              "refinenet.train", stage=None)
            self.jobs.append(job)
            job.ranks_up(row.ranks, timeout=max(120.0, 2.0 * hosts))
            preflight = job.stderr_time("preflight passed")
            if preflight is not None:
                row.preflight_s.append(preflight)
            for _ in range(self.args.repeat):
                self.view(path, row, row.busy_s, expect_leases=True)
            job.kill(signal.SIGINT)
            job.wait(120)
            job.close()
            left = gone_within(tag, 30)
            if left:
                row.notes.append(f"{len(left)} processes of the job left 30 s after SIGINT")
        return row

    def cleanup(self) -> None:
        for job in self.jobs:
            with contextlib.suppress(Exception):
                job.close()
                kill_tagged(job.job_id)
        stop_servers(self.servers)
        self.servers = []


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def table(rows: List[Row]) -> str:
    lines = ["| hosts | ranks | preflight s: median (each) | cluster s, idle hosts: median (each) "
             "| / preflight | cluster s, job running: median (each) | / preflight "
             "| ~/.bashrc runs per cluster | hosts showing the job's lease |",
             "|" + "---|" * 9]
    for r in rows:
        idle, busy, preflight = median(r.idle_s), median(r.busy_s), median(r.preflight_s)
        ratios = [f"{t / preflight:.2f}x" if t and preflight else "-" for t in (idle, busy)]
        each = [", ".join(fmt(t) for t in times) for times in (r.idle_s, r.busy_s, r.preflight_s)]
        runs = "/".join(str(n) for n in sorted(set(r.bashrc_per_view)))
        lines.append(f"| {r.hosts} | {r.ranks} | {fmt(preflight)} ({each[2]}) | {fmt(idle)} ({each[0]}) "
                     f"| {ratios[0]} | {fmt(busy)} ({each[1]}) | {ratios[1]} | {runs} "
                     f"| {r.leases_seen} of {r.hosts} |")
    return "\n".join(lines + [f"- {r.hosts} hosts: {n}" for r in rows for n in r.notes])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="16,64", help="comma-separated host counts (default 16,64)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks (and slots) per host (default 2)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="cluster views before each launch and while it runs (default 3)")
    parser.add_argument("--launches", type=int, default=2, help="launches per host count (default 2)")
    parser.add_argument("--step-s", type=float, default=1.0, help="seconds between the ranks' step lines")
    parser.add_argument("--health-s", type=float, default=10.0,
                        help="the job's health.interval_s: its monitor samples every host this often, one "
                             "short command each (default 10, the launcher's default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.hosts.split(",") if k.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 254 or min(args.ranks, args.repeat, args.launches) < 1:
        parser.error("--hosts takes 1..254 hosts; --ranks, --repeat and --launches at least 1")
    rows: List[Row] = []

    def measure(bench: Bench) -> None:
        bench.start_servers(max(sizes))
        for hosts in sizes:
            rows.append(bench.measure(hosts))
            print(table(rows[-1:]), flush=True)

    interrupted = run_in_folder("refinenet-cluster-view-", args.keep, lambda root: Bench(args, root), measure,
                                Bench.cleanup)
    if interrupted is not None:
        return interrupted
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
