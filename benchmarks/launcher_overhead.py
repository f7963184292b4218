"""Launcher overhead: one 2-rank CPU training job through `refinenet-launch` vs bare msrun.

The job is stage r1 of the real workload (ResNet-18 RefineNet, crop 33, batch 2 per rank, one
epoch) on a small synthetic dataset. Variants, run interleaved in the same process:

- `msrun (bare)`: the commands the launcher renders for this cluster, started with `subprocess`
  and their output sent to a file: `python -m refinenet.scheduler` and msrun (same msrun options,
  task and script arguments). Timed until msrun exits; no host checks, preflight, guard, job
  directory or log routing.
- `launch msrun`: `refinenet-launch --cluster C --stage r1` with `backend: msrun`.
- `launch dynamic`: the same with `backend: dynamic` (the launcher starts the scheduler and ranks).

Each launched job's wall time is divided by the bare msrun time of the same round (median over
rounds). On a shared machine that ratio mostly measures other load, so the launcher's own time is
also shown: from `refinenet-launch` starting to its first process starting (interpreter start,
cluster file, host checks, preflight, job directory) plus from the last worker (msrun or rank)
ending to `refinenet-launch` exiting, read from the clock and the job record's process times.
Every run writes to its own output directory.

Usage: python benchmarks/launcher_overhead.py [--repeat 3] [--workdir DIR] [--images 16]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.planning.factory import (
    PlanFactory,  # noqa: E402
    free_port,  # noqa: E402
)
from launcher.spec.load import load_cluster, with_master_port  # noqa: E402
from launcher.workload import workload_for  # noqa: E402
from tests.harness.cli import launcher_argv  # noqa: E402
from tests.harness.clusters import TIMEOUTS, cluster_file  # noqa: E402
from tests.harness.data import TRAIN_LIST, make_dataset  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402

R1 = {"depth": 18, "crop-size": 33, "batch-size": 2, "epochs": 1, "save-epochs": 1, "seed": 1,
      "mode": "pynative", "workers": 1}
VARIANTS = ("msrun (bare)", "launch msrun", "launch dynamic")


def write_cluster(workdir: Path, backend: str, data: Path) -> Path:
    """Two local ranks (the current directory), the launcher's own restart and health sampling defaults."""
    return cluster_file(workdir / f"{backend}.yaml", [{"name": "local", "ranks": 2}],
                        name=f"overhead-{backend}", backend=backend, quick=False,
                        job={"data": str(data), "output_dir": "out", "stage_overrides": {"r1": dict(R1)}},
                        health={"min_free_disk_gb": 0.1, "check_devices": False}, timeouts=TIMEOUTS)


def run_bare_msrun(cluster: Path, workdir: Path, tag: str) -> float:
    """The launcher's rendered msrun command and files, run directly."""
    spec = load_cluster(cluster, {"job.output_dir": f"out-{tag}"})
    spec = with_master_port(spec, free_port())
    plan = PlanFactory.create(spec, workload_for("r1"), str(workdir / "bare" / tag), f"bare-{tag}")()
    for f in plan.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
    scheduler, msrun = plan.processes
    log = workdir / f"bare-{tag}.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        procs = [subprocess.Popen(["bash", "-c", p.command], env={**child_env(), **p.env}, cwd=p.cwd,
                                  stdout=out, stderr=subprocess.STDOUT) for p in (scheduler, msrun)]
        code = procs[1].wait()
        elapsed = time.perf_counter() - start
        if procs[0].poll() is None:
            procs[0].terminate()
        procs[0].wait()
    if code != 0:
        raise SystemExit(f"bare msrun failed (exit {code}); see {log}")
    return elapsed


def run_launch(cluster: Path, workdir: Path, tag: str) -> Tuple[float, float]:
    """(wall seconds, the launcher's own seconds outside its processes' lifetime)."""
    job_id = f"launch-{tag}"
    argv = launcher_argv("--cluster", cluster, "--stage", "r1", "--runs-dir", workdir / "runs",
                         "--job-id", job_id, "--override", f"job.output_dir=out-{tag}")
    log = workdir / f"{job_id}.log"
    start, wall_start = time.perf_counter(), time.time()
    with open(log, "wb") as out:
        code = subprocess.run(argv, env=child_env(), cwd=workdir, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    elapsed, wall_end = time.perf_counter() - start, time.time()
    if code != 0:
        raise SystemExit(f"refinenet-launch failed (exit {code}); see {log}")
    processes = json.loads((workdir / "runs" / job_id / "job.json").read_text())["attempts"][0]["processes"]
    first_start = min(p["started"] for p in processes)
    last_end = max(p["ended"] for p in processes if p["name"] != "scheduler")
    return elapsed, (first_start - wall_start) + (wall_end - last_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three variants (default 3)")
    parser.add_argument("--workdir", help="where data, outputs and logs go (default: a new temp folder)")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="launcher-overhead-")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # the cluster's local host works in the current directory
    data = make_dataset(workdir / "data", images=args.images, seed=None, min_size=40, max_size=56)
    data = data / TRAIN_LIST
    clusters = {b: write_cluster(workdir, b, data) for b in ("msrun", "dynamic")}
    runners = {
        "msrun (bare)": lambda tag: (run_bare_msrun(clusters["msrun"], workdir, tag), 0.0),
        "launch msrun": lambda tag: run_launch(clusters["msrun"], workdir, tag),
        "launch dynamic": lambda tag: run_launch(clusters["dynamic"], workdir, tag),
    }
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    own: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    print(f"2-rank CPU r1 job, {args.repeat} round(s), work in {workdir}", flush=True)
    for round_no in range(args.repeat):
        order = VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]
        for variant in order:
            tag = f"{round_no}-{variant.replace(' ', '').replace('(', '').replace(')', '')}"
            wall, mine = runners[variant](tag)
            times[variant].append(wall)
            own[variant].append(mine)
            print(f"  round {round_no + 1}: {variant:15s} {wall:7.1f} s (launcher's own {mine:.2f} s)",
                  flush=True)
    base = times["msrun (bare)"]
    bare = statistics.median(base)
    print(f"\n{'variant':15s} {'median s':>9s} {'min s':>7s} {'wall ratio':>11s} {'own s':>7s} "
          f"{'(bare + own) / bare':>20s}")
    for variant in VARIANTS:
        ratios = [t / b for t, b in zip(times[variant], base)]
        mine = statistics.median(own[variant])
        print(f"{variant:15s} {statistics.median(times[variant]):9.1f} {min(times[variant]):7.1f} "
              f"{statistics.median(ratios):11.3f} {mine:7.2f} {(bare + mine) / bare:20.3f}")


if __name__ == "__main__":
    main()
