"""Backend slurm against the SSH path, on a real Slurm cluster of N nodes on this machine.

`python benchmarks/slurm_launch.py --nodes 4 --ranks 8` brings up a Slurm cluster (tests/e2e/slurm.py:
slurmctld, one slurmd per network namespace) and N private sshd on 127.0.1.x (tests/e2e/sshd.py), and
runs the stand-in workload of tests/harness (one step line every --step-s seconds) as every rank:

1. `salloc -N N refinenet-launch --cluster <slurm> --stage r1`: launcher start -> every rank's first step
   line in job.log (salloc's allocation included); then kill -9 of one rank -> every process of the job
   gone (REFINENET_JOB_ID tag in /proc, polled every 20 ms; the nodes share this kernel).
2. the same over SSH (`backend: dynamic`, one host per sshd): the same two figures.
3. `refinenet-launch submit`: sbatch -> every rank's first step line; then `stop` -> every process gone.

Ratios are against the SSH path measured in the same run. Needs root and `make system`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import standin  # noqa: E402
from tests.harness.cli import cli  # noqa: E402
from tests.harness.clusters import cluster_file, ssh_host  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402
from tests.harness.hosts import ClientKey, SlurmCluster, start_servers, stop_servers  # noqa: E402
from tests.harness.launched import LaunchedJob  # noqa: E402
from tests.harness.procs import gone_after, rank_pids, snapshot  # noqa: E402

#: Both cluster files (no restarts) give the cluster two minutes to form.
TIMEOUTS = {"cluster_s": 120, "heartbeat_s": 30}


def slurm_cluster_file(folder: Path, nodes: int, ranks: int, python: str, step_s: float) -> Path:
    workdir = folder / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train.lst").write_text("a.jpg a.png\n")
    return cluster_file(folder / "cluster.yaml", name="slurm-bench", backend="slurm", storage="shared",
                        slurm={"nodes": nodes, "ranks_per_node": ranks, "python": python,
                               "workdir": str(workdir)},
                        env=standin.steps_env(step_s), timeouts=TIMEOUTS)


def up_then_kill9(job: LaunchedJob, world: int, timeout: float) -> Dict[str, Optional[float]]:
    up = job.ranks_up(world, timeout=timeout)
    time.sleep(1.0)
    procs = snapshot(job.job_id)
    pids = rank_pids(job.job_id)
    killed = time.monotonic()
    os.kill(pids[world // 2], signal.SIGKILL)
    gone, left = gone_after(procs, killed, 30.0)
    job.wait(60)
    job.close()
    return {"up": up, "gone": gone if not left else None}


def submitted(
    cluster: Path, runs: Path, job_id: str, env: Dict[str, str], world: int, timeout: float
) -> Dict[str, Optional[float]]:
    started = time.monotonic()
    out = cli("submit", "--cluster", cluster, "--stage", "r1", "--runs-dir", runs, "--job-id", job_id,
              env=env, cwd=cluster.parent)
    if out.returncode != 0:
        raise RuntimeError(f"submit failed: {out.stderr}")
    returned = time.monotonic() - started
    log = runs / job_id / "logs" / "job.log"
    deadline = started + timeout
    up = None
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        first = {line.split(" ", 1)[0] for line in lines if "epoch: 1 step: 1," in line}
        if all(f"[r{r}" in first for r in range(world)):
            up = time.monotonic() - started
            break
        time.sleep(0.05)
    procs = snapshot(job_id)
    sent = time.monotonic()
    cli("stop", job_id, "--runs-dir", runs, env=env)
    stop_returned = time.monotonic() - sent
    gone, left = gone_after(procs, sent, 30.0)
    return {"submit": returned, "up": up, "stop": stop_returned, "gone": gone if not left else None}


def fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--ranks", type=int, default=8, help="ranks per node")
    p.add_argument("--step-s", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    world = args.nodes * args.ranks
    timeout = max(120.0, 4.0 * world)
    root = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    python = standin.install(root / "standin")
    env = child_env()
    servers = []
    with SlurmCluster(
        root / "slurm", nodes=args.nodes, bridge="rnbench0", netns_prefix="rnbench", cluster_name="rnbench"
    ) as cluster:
        env.update(cluster.env)
        try:
            key = ClientKey.create(root / "client")
            servers = start_servers(root / "hosts", key, args.nodes)
            ssh_cluster = cluster_file(
                root / "ssh" / "cluster.yaml",
                [ssh_host(s.host(), ranks=args.ranks, python=python) for s in servers],
                name="ssh-bench",
                env=standin.steps_env(args.step_s),
                lists=("train.lst",),
                timeouts=TIMEOUTS,
            )
            slurm_cluster = slurm_cluster_file(root / "slurmjob", args.nodes, args.ranks, python, args.step_s)
            rows: Dict[str, List[Dict[str, Optional[float]]]] = {"slurm": [], "ssh": [], "submit": []}
            salloc = ["salloc", f"-N{args.nodes}"]
            for i in range(args.repeat):
                job = LaunchedJob(slurm_cluster, root / "runs", f"slurm-{i}", env, wrap=salloc)
                rows["slurm"].append(up_then_kill9(job, world, timeout))
                job = LaunchedJob(ssh_cluster, root / "runs", f"ssh-{i}", env)
                rows["ssh"].append(up_then_kill9(job, world, timeout))
                rows["submit"].append(
                    submitted(slurm_cluster, root / "runs", f"sub-{i}", env, world, timeout)
                )
                cluster.cancel_all()
        finally:
            stop_servers(servers)
    print(
        f"\n{args.nodes} nodes x {args.ranks} ranks = {world} ranks, stand-in step every {args.step_s} s, "
        f"{args.repeat} runs each (median)\n"
    )
    med = {k: {m: _median([r[m] for r in v]) for m in v[0]} for k, v in rows.items()}
    ssh_up = med["ssh"]["up"]
    print("| path | start -> every rank's first step (s) | vs SSH "
          "| kill -9 of a rank -> every process gone (s) |")
    print("|---|---|---|---|")
    for name, label in (
        ("slurm", "Slurm: salloc + launcher (agents as srun steps)"),
        ("ssh", "SSH: launcher over sshd (same hosts count)"),
    ):
        up, gone = med[name]["up"], med[name]["gone"]
        ratio = f"{up / ssh_up:.2f}x" if up and ssh_up else "-"
        print(f"| {label} | {fmt(up)} | {ratio} | {fmt(gone)} |")
    s = med["submit"]
    print(
        f"\nsubmit: sbatch returned after {fmt(s['submit'])} s; every rank's first step line "
        f"{fmt(s['up'])} s after submit; stop returned after {fmt(s['stop'])} s, every process gone "
        f"{fmt(s['gone'])} s after stop began"
    )
    print(json.dumps(rows), file=sys.stderr)
    with contextlib.suppress(OSError):
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


def _median(values: List[Optional[float]]) -> Optional[float]:
    present = sorted(v for v in values if v is not None)
    return present[len(present) // 2] if present else None


if __name__ == "__main__":
    sys.exit(main())
