"""Restart start-up: a resumed attempt's start -> first step, cold vs warm interpreters, with and without
the compile cache, against the cold first attempt of the same job.

Per round: a 2-rank CPU r1 job (dynamic cluster: scheduler + 2 workers on this machine; depth 18,
crop 33, batch 1, graph mode, 2 epochs of 3 steps on 12 synthetic images, a checkpoint per epoch)
runs uninterrupted as its first attempt, cold, filling a fresh compile cache
(`REFINENET_COMPILE_CACHE`). Then four restarts, each resuming from the first attempt's epoch-1
checkpoint to the end (the order rotates by one each round, so load that drifts during a round
falls on every variant alike):

  cold            new interpreters, no cache (the launcher's restart today)
  cold + cache    new interpreters, the compile cache the first attempt filled
  warm            warm interpreters (launcher/hostside/warm.py, one per process, the scheduler's
                  included), no cache
  warm + cache    both

A warm variant's interpreters are started and ready before its attempt starts, as a host agent
keeps them during the job; the attempt starts when the first of them is handed its command (cold:
when the first process is started). Lines are timestamped on arrival. Reported: start -> the later
rank's "training starts from" line (imports, network, cluster, restore: "configured") and -> its
first step line, the first step's own duration (compile + run, from the metrics record), the
1-minute load average as the attempt ended (the machine is shared); the ratio to the first
attempt's start -> first step (the goal for the launcher is at most 0.6x); and whether each
restart's final checkpoint equals the uninterrupted first attempt's, tensor for tensor, bit for bit.

    python benchmarks/warm_start.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refinenet import ckpt_reader  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.e2e import warm_job  # noqa: E402

TRAIN = ("--stage", "r1", "--depth", "18", "--crop-size", "33", "--batch-size", "1", "--epochs", "2",
         "--save-epochs", "1", "--workers", "1", "--mode", "graph")
VARIANTS = (("cold", False, False), ("cold + cache", False, True), ("warm", True, False),
            ("warm + cache", True, True))
CONFIGURED = re.compile(r"^training starts from")


def make_data(root: Path) -> Path:
    for cmd in (["synth", "--out", str(root), "--images", "12", "--seed", "3", "--max-size", "64"],
                ["lists", "--data-root", str(root)]):
        subprocess.run([sys.executable, "-m", "refinenet.data", *cmd], check=True, capture_output=True)
    return root / "sbd_train_lst.txt"


def attempt(work: Path, data: Path, out: Path, cache: Optional[Path], warm: bool,
            resume: Optional[Path] = None) -> Dict[str, object]:
    env = warm_job.job_env()
    rank_env = {"REFINENET_COMPILE_CACHE": str(cache)} if cache else {}
    args = (*TRAIN, "--data", str(data), "--output-dir", str(out))
    if resume:
        args += ("--resume", str(resume))
    specs = warm_job.attempt_processes(free_port(), 2, args, env, rank_env)
    ready = []
    if warm:
        slots = warm_job.warm_slots(specs, env, work)
        ready = [slot.wait_ready() for slot in slots]
        time.sleep(1.0)
        procs = warm_job.start_warm(slots, specs, work)
    else:
        procs = warm_job.start_cold(specs, work)
    warm_job.wait_all(procs, timeout=900)
    start = min(p.started for p in procs)
    workers = procs[1:]
    step1 = [json.loads((out / "metrics" / f"rank_{r}.jsonl").read_text().splitlines()[0])["seconds"]
             for r in range(len(workers))]
    return {"first step": warm_job.first_step(procs), "step 1": max(step1),
            "cpu": max(p.cpu_to_first_step for p in workers),
            "load": float(Path("/proc/loadavg").read_text().split()[0]),
            "configured": max(p.first(CONFIGURED, p.started) for p in workers) - start,
            "imports in the warm interpreters": max((r["seconds"] for r in ready), default=None),
            "cache lines": [re.search(r"compile cache: .*", p.text()).group(0) for p in workers if cache]}


def same_checkpoint(a: Path, b: Path) -> bool:
    x, y = ckpt_reader.read_checkpoint(a), ckpt_reader.read_checkpoint(b)
    return x.keys() == y.keys() and all(x[n].dtype == y[n].dtype and x[n].tobytes() == y[n].tobytes()
                                        for n in x)


def describe(run: dict) -> str:
    return (f"start -> configured {run['configured']:.2f} s, -> first step {run['first step']:.2f} s (step 1 "
            f"{run['step 1']:.2f} s; CPU to the first step {run['cpu']:.2f} s); load {run['load']:.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    firsts: List[dict] = []
    restarts: Dict[str, List[dict]] = {name: [] for name, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        work = Path(tmp)
        data = make_data(work / "data")
        for rnd in range(args.rounds):
            cache = work / f"cache-{rnd}"
            base = work / f"first-{rnd}"
            first = attempt(work, data, base, cache, warm=False)
            firsts.append(first)
            print(f"round {rnd + 1} first attempt (cold, fills the cache): {describe(first)}", flush=True)
            resume = base / "ckpt" / "refinenet-1_3.ckpt"
            final = base / "ckpt" / "refinenet-2_3.ckpt"
            for name, warm, use_cache in VARIANTS[rnd % len(VARIANTS):] + VARIANTS[:rnd % len(VARIANTS)]:
                out = work / f"restart-{rnd}-{name.replace(' + ', '-')}"
                run = attempt(work, data, out, cache if use_cache else None, warm, resume)
                run["identical"] = same_checkpoint(out / "ckpt" / "refinenet-2_3.ckpt", final)
                run["ratio"] = run["first step"] / first["first step"]
                restarts[name].append(run)
                imports = run["imports in the warm interpreters"]
                ahead = f"; imports done ahead in {imports:.2f} s" if imports is not None else ""
                print(f"round {rnd + 1} restart {name}: {describe(run)}; {run['ratio']:.2f}x the first "
                      f"attempt; final checkpoint identical: {run['identical']}{ahead}", flush=True)
                for line in run["cache lines"]:
                    print(f"    {line}", flush=True)
                shutil.rmtree(out)
            shutil.rmtree(base)

    def med(runs: List[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"\nmedians over {args.rounds} rounds (s; CPU: the later rank's CPU seconds from its start to its "
          "first step)")
    print("| attempt | start -> configured | step 1 | CPU to the first step | start -> first step "
          "| / first attempt (median, per round) | final checkpoint identical |")
    print("|---|---|---|---|---|---|---|")
    print(f"| first attempt, cold | {med(firsts, 'configured'):.2f} | {med(firsts, 'step 1'):.2f} | "
          f"{med(firsts, 'cpu'):.2f} | {med(firsts, 'first step'):.2f} | 1 | - |")
    for name, runs in restarts.items():
        ratios = ", ".join(f"{r['ratio']:.2f}" for r in runs)
        same = "yes" if all(r["identical"] for r in runs) else "NO"
        print(f"| restart, {name} | {med(runs, 'configured'):.2f} | {med(runs, 'step 1'):.2f} | "
              f"{med(runs, 'cpu'):.2f} | {med(runs, 'first step'):.2f} | {med(runs, 'ratio'):.2f} ({ratios}) "
              f"| {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
