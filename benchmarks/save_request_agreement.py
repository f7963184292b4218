"""The save request's per-step agreement: what it adds to every training step on CPU.

Two real ranks of a dynamic cluster (scheduler and both workers on this machine). After every step
each rank checks its own request (`SaveRequest.pending()`: a flag and one stat of the request file)
and the ranks agree (`StopAgreement`: AllReduce of a one-element flag). Measured on rank 0, medians
over `--calls` calls after warm-up, in graph and pynative mode, next to the train step they follow
(RefineNet, depth 18, crop 33, batch 1, graph mode: the tests' configuration).

Usage: python benchmarks/save_request_agreement.py [--calls 500] [--steps 20]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.environment import free_port  # noqa: E402


def _median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def worker(calls: int, steps: int, request_path: str) -> dict:
    import mindspore as ms
    import numpy as np

    from refinenet import lr as lr_mod
    from refinenet import save_request
    from refinenet.dist import StopAgreement, detect_launch, init_cluster
    from refinenet.model import build_refinenet
    from refinenet.presets import preset
    from refinenet.train import build_train_cell

    request = save_request.install({"REFINENET_SAVE_REQUEST": request_path})
    ms.set_device("CPU")
    cluster = init_cluster(detect_launch())
    out = {"rank": cluster.rank, "pending_ms": _median_ms(request.pending, calls)}
    for mode, name in ((ms.GRAPH_MODE, "graph"), (ms.PYNATIVE_MODE, "pynative")):
        ms.set_context(mode=mode)
        t0 = time.perf_counter()
        agreement = StopAgreement(cluster)
        out[f"agreement_{name}_first_s"] = time.perf_counter() - t0
        for _ in range(20):
            agreement(False)
        out[f"agreement_{name}_ms"] = _median_ms(lambda a=agreement: a(request.pending()), calls)
    ms.set_context(mode=ms.GRAPH_MODE)
    hp = preset("r1", "cpu", 2, {"depth": 18, "crop_size": 33, "batch_size": 1, "epochs": 1})
    ms.set_seed(1)
    net = build_refinenet(num_classes=hp.num_classes, depth=hp.depth, bn_mode=hp.bn_mode)
    cell, _ = build_train_cell(net, hp, lr_mod.learning_rates("cos", 0.002, steps + 2, 1))
    rng = np.random.default_rng(cluster.rank)
    data = ms.Tensor(rng.normal(size=(1, 3, 33, 33)).astype(np.float32))
    label = ms.Tensor(rng.integers(0, hp.num_classes, size=(1, 33, 33)).astype(np.int32))
    cell(data, label).asnumpy()
    out["train_step_ms"] = _median_ms(lambda: cell(data, label).asnumpy(), steps)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--request", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.calls, args.steps, args.request)), flush=True)
        return 0

    env = dict(os.environ, PYTHONPATH=str(REPO), MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()),
               MS_WORKER_NUM="2", MS_TOPO_TIMEOUT="120")
    with tempfile.TemporaryDirectory() as tmp:
        request = os.path.join(tmp, "request")  # never created: the usual case, a stat that fails
        procs = [subprocess.Popen([sys.executable, "-m", "refinenet.scheduler"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        for rank in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", "--calls", str(args.calls), "--steps", str(args.steps),
                 "--request", request], env=dict(env, MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank)),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        outputs = [p.communicate(timeout=900)[0] for p in procs[1:]]
        procs[0].wait(timeout=60)
    results = [json.loads(line[len("RESULT "):]) for out in outputs for line in out.splitlines()
               if line.startswith("RESULT ")]
    if len(results) != 2:
        print("a worker failed:\n" + "\n".join(outputs), file=sys.stderr)
        return 1
    load = os.getloadavg()[0]
    print(f"2 ranks, CPU, load average {load:.1f}; medians of {args.calls} calls / {args.steps} steps")
    for r in sorted(results, key=lambda r: r["rank"]):
        step = r["train_step_ms"]
        graph, pynative = r["agreement_graph_ms"], r["agreement_pynative_ms"]
        print(f"rank {r['rank']}: request check {r['pending_ms'] * 1000:.1f} us; agreement "
              f"graph {graph:.3f} ms ({graph / step:.2%} of the step), "
              f"pynative {pynative:.3f} ms ({pynative / step:.2%}); "
              f"first call graph {r['agreement_graph_first_s']:.2f} s, "
              f"pynative {r['agreement_pynative_first_s']:.2f} s; train step {step:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
