"""Graph compile cache: what a second process of the same 2-rank job saves, phase by phase.

A 2-rank CPU r1 job (dynamic cluster: scheduler + 2 workers on this machine; depth 18, crop 33,
batch 1, graph mode, one epoch of 3 steps on 12 synthetic images) runs four times per round,
interleaved: without the cache a first and a second process, then with `REFINENET_COMPILE_CACHE` (a
fresh folder each round) a first process, which fills the cache, and a second, which should load
it. Each worker runs tests/e2e/rank_phases.py (refinenet.train with a line per start-up phase),
and every line is timestamped on arrival. Reported per run (the later rank of the two):

  imports      process start -> mindspore and refinenet imported
  network      -> context set, network built and initialised
  cluster      -> `init()` returned (cluster formed: waits for the scheduler and the other rank)
  prepare      -> train cell, state check across ranks (a small compiled graph), data pipeline
  step 1       the first train step (graph compile + run; from the metrics record)
  step 2       the second step (run only): step 1 - step 2 is the compile
  start->step1 process start -> first step done

and whether the cache was used: the graph files per rank in the cache folder, each rank's
`compile cache: ... (N graphs of rank r cached)` line and MindSpore's own log lines (GLOG_v=2 here:
"Use the compilation cache" on a hit, "Check the consistency of dependency files hash failed" on
a miss).

Then why the cache needs a key of its own (`--probe` runs only this): a small network (its
parameters do not depend on the image size) is trained for 3 steps in one process with MindSpore's
cache folder set directly (no key), and the same folder is reused by a process that feeds it larger
images and by one with other learning rates; each is compared with the same process without a
cache.

    python benchmarks/compile_cache.py [--rounds 2] [--probe]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402
from tests.e2e import warm_job  # noqa: E402

PHASES = ("imported", "network", "cluster", "prepared")
TRAIN = ("--stage", "r1", "--depth", "18", "--crop-size", "33", "--batch-size", "1", "--epochs", "1",
         "--workers", "1", "--mode", "graph")
HIT = "Use the compilation cache"
MISS = "Check the consistency of dependency files hash failed"


def make_data(root: Path) -> Path:
    for cmd in (["synth", "--out", str(root), "--images", "12", "--seed", "3", "--max-size", "64"],
                ["lists", "--data-root", str(root)]):
        subprocess.run([sys.executable, "-m", "refinenet.data", *cmd], check=True, capture_output=True)
    return root / "sbd_train_lst.txt"


def run_job(work: Path, data: Path, out: Path, cache: Path = None) -> Dict[str, object]:
    env = warm_job.job_env({"GLOG_v": "2"})
    rank_env = {"REFINENET_COMPILE_CACHE": str(cache)} if cache else {}
    args = (*TRAIN, "--data", str(data), "--output-dir", str(out))
    specs = warm_job.attempt_processes(free_port(), 2, args, env, rank_env)
    phases = str(REPO / "tests" / "e2e" / "rank_phases.py")
    specs = [s if s.name == "scheduler" else
             warm_job.ProcessSpec(s.name, (phases, *s.argv[2:]), s.env, s.main, s.preload) for s in specs]
    procs = warm_job.start_cold(specs, work)
    warm_job.wait_all(procs, timeout=600)
    ranks = []
    for rank, proc in enumerate(procs[1:]):
        marks = [proc.first(re.compile(rf"^phase {p}$")) for p in PHASES]
        metrics = out / "metrics" / f"rank_{rank}.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        times = [proc.started, *marks]
        phase = {p: b - a for p, a, b in zip(PHASES, times, times[1:])}
        text = proc.text()
        said = re.search(r"compile cache: \S+ \((\d+) graphs", text)
        ranks.append({**phase, "step 1": records[0]["seconds"], "step 2": records[1]["seconds"],
                      "cached before": int(said.group(1)) if said else None,
                      "hits": text.count(HIT), "misses": text.count(MISS)})
    first_step = warm_job.first_step(procs)
    files = sorted(str(p.relative_to(cache)) for p in cache.rglob("*.mindir")) if cache else []
    return {"ranks": ranks, "start->step1": first_step, "files": files,
            "cache bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache else 0}


PROBE = """
import os, sys
import numpy as np
import mindspore as ms
from mindspore import nn
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
size, lr = int(sys.argv[1]), float(sys.argv[2])


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv, self.dense = nn.Conv2d(3, 8, 3), nn.Dense(8, 2)

    def construct(self, x):
        return self.dense(self.conv(x).mean(axis=(2, 3)))


ms.set_seed(1)
net = Net()
opt = nn.Momentum(net.trainable_params(), [lr, lr / 2, lr / 4], 0.9)
cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)
x = ms.Tensor(np.linspace(0, 1, 2 * 3 * size * size, dtype=np.float32).reshape(2, 3, size, size))
y = ms.Tensor(np.zeros((2, 2), np.float32))
print(" ".join("%.7f" % float(cell(x, y).asnumpy()) for _ in range(3)))
"""


def probe(work: Path) -> None:
    """Losses of the probe network with and without a shared, unkeyed MindSpore cache folder."""
    def losses(size: int, lr: float, cache: Path = None) -> str:
        env = warm_job.job_env({"GLOG_v": "2"})
        if cache:
            env.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=str(cache))
        done = subprocess.run([sys.executable, str(script), str(size), str(lr)], env=env, cwd=str(work),
                              capture_output=True, text=True, check=True)
        hit = " (loaded from the cache)" if HIT in done.stdout + done.stderr else ""
        return done.stdout.strip() + hit

    # A file, not `python -c`: MindSpore hashes the entry script (sys.argv[0] when it was imported) for
    # its cache and fails on "-c".
    script = work / "probe.py"
    script.write_text(PROBE)
    cache = work / "unkeyed"
    print("\nunkeyed cache (MindSpore's own check only), losses of 3 steps:", flush=True)
    print(f"  16x16 images, lr 0.1, fills the cache:      {losses(16, 0.1, cache)}", flush=True)
    print(f"  24x24 images, no cache:                     {losses(24, 0.1)}", flush=True)
    print(f"  24x24 images, the 16x16 cache folder:       {losses(24, 0.1, cache)}", flush=True)
    print(f"  16x16 images, lr 0.3, no cache:             {losses(16, 0.3)}", flush=True)
    print(f"  16x16 images, lr 0.3, the lr 0.1 cache:     {losses(16, 0.3, cache)}", flush=True)


def summary(run: Dict[str, object]) -> Dict[str, float]:
    ranks: List[dict] = run["ranks"]
    row = {k: max(r[k] for r in ranks) for k in ("imported", "network", "cluster", "prepared", "step 1",
                                                 "step 2")}
    row["compile (step 1 - step 2)"] = row["step 1"] - row["step 2"]
    row["start->step1"] = run["start->step1"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--probe", action="store_true", help="only the unkeyed-cache probe")
    args = p.parse_args()
    if args.probe:
        with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
            probe(Path(tmp))
        return 0
    results: Dict[str, List[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        work = Path(tmp)
        data = make_data(work / "data")
        for rnd in range(args.rounds):
            cache = work / f"cache-{rnd}"
            for name, use in (("no cache, first process", None), ("cache, first process (fills it)", cache),
                              ("no cache, second process", None), ("cache, second process", cache)):
                out = work / f"out-{rnd}-{len(results.get(name, []))}-{name[:8].replace(' ', '')}"
                run = run_job(work, data, out, use)
                results.setdefault(name, []).append(run)
                row = summary(run)
                print(f"round {rnd + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
                      flush=True)
                for rank, r in enumerate(run["ranks"]):
                    if use:
                        print(f"    r{rank}: 'compile cache' line says {r['cached before']} graphs cached; "
                              f"MindSpore: {r['hits']} cache hits, {r['misses']} misses", flush=True)
                if use:
                    print(f"    cache folder: {len(run['files'])} graph files, {run['cache bytes']} bytes: "
                          + ", ".join(run["files"]), flush=True)
                subprocess.run(["rm", "-rf", str(out)], check=True)
    print("\nmedians over rounds (s; the later rank of the two):")
    names = list(results)
    rows = {n: [summary(r) for r in results[n]] for n in names}
    keys = list(rows[names[0]][0])
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in keys:
        cells = " | ".join(f"{statistics.median(r[k] for r in rows[n]):.2f}" for n in names)
        print(f"| {k} | {cells} |")
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        probe(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
