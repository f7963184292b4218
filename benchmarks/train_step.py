"""Training-step cost on this machine: AMP levels against float32 (O0), and atomic against plain saves.

`python benchmarks/train_step.py [--depth 18] [--crop 65] [--batch 2] [--steps 6]` builds the
same seeded RefineNet per AMP level in one process, runs warm-up steps (graph compilation) and
then times `--steps` train steps; the ratio column is the median step time over O0's. The second
table saves the resulting train cell (weights, moments, step) with `checkpoints.save_atomic`
(temporary name, fsync, rename, manifest with sha256) and with a plain `mindspore.save_checkpoint`.
"""
from __future__ import annotations  # noqa: I001  (refinenet sets CPU defaults before MindSpore loads)

import argparse
import statistics
import tempfile
import time

import refinenet  # noqa: F401
import mindspore as ms
import numpy as np

from refinenet import checkpoints as ck
from refinenet.lr import learning_rates
from refinenet.model import build_refinenet
from refinenet.presets import preset
from refinenet.train import build_train_cell


def step_times(level: str, dtype, args) -> list:
    ms.set_seed(1)
    net = build_refinenet(num_classes=21, depth=args.depth, bn_mode="frozen")
    if level != "O0":
        net = ms.amp.auto_mixed_precision(net, level, dtype=dtype)
    hp = preset("r1", "cpu", 1, {"batch_size": args.batch, "crop_size": args.crop})
    cell, _ = build_train_cell(net, hp, learning_rates("cos", hp.base_lr, 100, 1))
    rng = np.random.default_rng(0)
    data = ms.Tensor(rng.normal(size=(args.batch, 3, args.crop, args.crop)).astype(np.float32))
    label = ms.Tensor(rng.integers(0, 21, size=(args.batch, args.crop, args.crop)).astype(np.int32))
    for _ in range(2):
        cell(data, label).asnumpy()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        cell(data, label).asnumpy()
        times.append(time.perf_counter() - t0)
    return times, cell


def save_times(cell, repeat: int) -> tuple:
    atomic, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            t0 = time.perf_counter()
            ck.save_atomic(cell, tmp, stage="r1", epoch=i + 1, step=1, steps_per_epoch=1, global_step=i + 1,
                           rank=0)
            atomic.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ms.save_checkpoint(cell, f"{tmp}/plain-{i}.ckpt")
            plain.append(time.perf_counter() - t0)
    return statistics.median(atomic), statistics.median(plain)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--crop", type=int, default=65)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--levels", nargs="+", default=["O0", "O1", "O2", "O3"])
    p.add_argument("--save-repeat", type=int, default=3)
    args = p.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    print(f"depth {args.depth}, crop {args.crop}, batch {args.batch}, {args.steps} timed steps, graph mode")
    print("| amp level | dtype | median s/step | vs O0 |")
    print("|---|---|---|---|")
    base = None
    cell0 = None
    for level in args.levels:
        for dtype in ([ms.float32] if level == "O0" else [ms.float16, ms.bfloat16]):
            try:
                times, cell = step_times(level, dtype, args)
            except (TypeError, RuntimeError, ValueError, ImportError) as exc:
                reason = str(exc).strip().splitlines()
                print(f"| {level} | {dtype} | fails: {reason[-1][:80] if reason else type(exc).__name__} | |")
                continue
            median = statistics.median(times)
            if level == "O0":
                base, cell0 = median, cell
            ratio = f"{median / base:.2f}x" if base else ""
            print(f"| {level} | {dtype} | {median:.3f} | {ratio} |", flush=True)
    if cell0 is not None:
        atomic, plain = save_times(cell0, args.save_repeat)
        print("\n| save | median s |\n|---|---|")
        print(f"| mindspore.save_checkpoint | {plain:.3f} |")
        print(f"| checkpoints.save_atomic (fsync, rename, sha256 manifest) | {atomic:.3f} "
              f"({atomic / plain:.2f}x) |")


if __name__ == "__main__":
    main()
