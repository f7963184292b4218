"""RefineNet train step: today's formulation against faster ones, same results required.

`python benchmarks/train_step_formulation.py [--depth 101] [--crop 513] [--steps 3]
[--variants today separable-pool ...]` runs every variant in a child process started by this
command, one after the other (a RefineNet-101 train step at 513x513 holds ~12 GiB). `--same-process
VARIANT` instead builds `today` and VARIANT in this one process and alternates their train steps:
the timing to read, since step times move by several percent between processes (17.7 GiB for
`today` and `winograd` at 513x513). Each child builds the same seeded
network (ms.set_seed(1), bn_mode frozen as in r1) and the same 1x3xCROPxCROP input and labels; it
computes the loss and the gradients of all trainable parameters once (GradOperation over network
and loss, before any update), then builds the r1 train cell (Momentum, loss scale 1024), runs one
warm-up step (compilation) and times `--steps` steps. The parent prints a markdown table: median
s/step, ratio to `today`, and the worst relative difference to `today` of the loss, of the
per-step training losses and of the gradients (per parameter max|g - g_today| / max|g_today|,
the worst parameter reported). `--rounds 2` runs the list twice (interleaved) and takes each
variant's median over all its timed steps, which evens out load from other jobs.

Variants: `today` (square 5x5 'same' max pool, plain convolutions: the formulation before this
benchmark), `separable-pool` (`separable_pool=True`: 1x5 and 5x1 argmax-keeping pools, see
MaxPool5x5), `winograd` (separable pools and `winograd=True`: the decoder's 3x3 convolutions of
>= 256 channels at >= 65x65 in Winograd form F(2x2,3x3), see WinogradConv2d; the CPU default),
`argmax-pool` (square 5x5 argmax-keeping pool), `bn-folded` (separable pool, and each frozen BN of
the bottleneck blocks folded into its convolution: conv(x, w * s) + (beta - mean * s)),
`no-bn` (separable pool, frozen BN removed: not the same results, an upper bound for folding),
`jit-O0`, `jit-O1` (separable pool, JitConfig(jit_level=...) on the train cell),
`graph-kernel` (separable pool, set_context(enable_graph_kernel=True)), `threads-N`
(separable pool, device_context.cpu.op_tuning.threads_num(N)), `inter-op-N` (separable pool,
set_context(inter_op_parallel_num=N): at most N operators at once). Control: `input-ulp` (today's
formulation with every input value moved by one unit in the last place: how far float rounding
alone moves the gradients).
"""
from __future__ import annotations  # noqa: I001  (refinenet sets CPU defaults before MindSpore loads)

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import refinenet  # noqa: F401
import mindspore as ms
from mindspore import nn, ops

from refinenet.loss import LossAndGrads, NetWithLoss, SegmentationLoss
from refinenet.lr import learning_rates
from refinenet.model import build_refinenet
from refinenet.model.resnet import Bottleneck
from refinenet.presets import preset
from refinenet.train import build_train_cell

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["today", "separable-pool", "winograd"]


def conv_bn(conv, bn, x):
    """Frozen BN folded into the conv: conv(x, w * s) + (beta - mean * s), s = gamma / sqrt(var + eps)."""
    scale = bn.gamma * ops.rsqrt(bn.moving_variance + bn.eps)
    shift = bn.beta - bn.moving_mean * scale
    weight = conv.weight * ops.reshape(scale, (-1, 1, 1, 1))
    return ops.bias_add(conv.conv2d(x, weight), shift)


class FoldedBottleneck(Bottleneck):
    def construct(self, x):
        residual = conv_bn(self.downsample[0], self.downsample[1], x) if self.has_downsample else x
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = self.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        return self.relu(out + residual)


class NoBN(nn.BatchNorm2d):
    def construct(self, x):
        return x


def randomize_bn(net, seed: int = 7) -> None:
    """Trained-like BN values (freshly built BNs are the identity, which hides folding errors)."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith((".gamma", ".beta", ".moving_mean", ".moving_variance")):
            low, high = (0.5, 1.5) if p.name.endswith((".gamma", ".moving_variance")) else (-0.2, 0.2)
            p.set_data(ms.Tensor(rng.uniform(low, high, size=p.shape).astype(np.float32)))


def swap_class(net, old, new) -> int:
    """Give every cell of exactly type `old` the class `new` (same attributes, other construct)."""
    count = 0
    for _, cell in net.cells_and_names():
        if type(cell) is old:
            cell.__class__ = new
            count += 1
    return count


def train_preset(args):
    return preset("r1", "cpu", 1, {"batch_size": 1, "crop_size": args.crop, "depth": args.depth})


def build_variant(variant: str, hp) -> tuple:
    """(network, note) of one variant, seeded like every other variant, BN values randomised."""
    ms.set_seed(hp.seed)
    net = build_refinenet(num_classes=hp.num_classes, depth=hp.depth, bn_mode=hp.bn_mode,
                          separable_pool=variant not in ("today", "argmax-pool", "input-ulp"),
                          winograd=variant == "winograd")
    if variant == "argmax-pool":
        for _, cell in net.cells_and_names():
            if type(cell).__name__ == "MaxPool5x5":
                cell.square = nn.MaxPool2d(kernel_size=5, stride=1, pad_mode="pad", padding=2)
    note = ""
    if variant == "bn-folded":
        note = f"{swap_class(net, Bottleneck, FoldedBottleneck)} bottleneck blocks folded"
    if variant == "no-bn":
        note = f"{swap_class(net, nn.BatchNorm2d, NoBN)} BN removed"
    randomize_bn(net)
    return net, note


def batch(variant: str, hp, crop: int) -> tuple:
    """The same seeded 1x3xCROPxCROP input and labels for every variant (moved by 1 ulp for `input-ulp`)."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 3, crop, crop)).astype(np.float32)
    if variant == "input-ulp":  # a control, not a formulation: today's network, input moved by 1 ulp
        image = np.nextafter(image, np.float32(np.inf))
    label = rng.integers(0, hp.num_classes, size=(1, crop, crop)).astype(np.int32)
    return ms.Tensor(image), ms.Tensor(label)


def same_process(args) -> None:
    """`today` and one variant in this one process, their train steps alternated; prints the ratio."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    hp = train_preset(args)
    lrs = learning_rates("cos", hp.base_lr, 100, 1)
    cells = {}
    for variant in ("today", args.same_process):
        net, _ = build_variant(variant, hp)
        cells[variant] = build_train_cell(net, hp, lrs)[0]
    data, label = batch("today", hp, args.crop)
    times = {v: [] for v in cells}
    losses = {v: [] for v in cells}
    for i in range(args.steps + 1):
        for variant, cell in cells.items():
            t0 = time.perf_counter()
            losses[variant].append(float(cell(data, label).asnumpy()))
            if i:
                times[variant].append(time.perf_counter() - t0)
    base, other = (statistics.median(times[v]) for v in cells)
    print(f"RefineNet-{args.depth}, input 1x3x{args.crop}x{args.crop}, one process, {args.steps} "
          f"alternated steps each after one warm-up step each; max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    for variant in cells:
        print(f"  {variant}: steps {', '.join(f'{t:.2f}' for t in times[variant])} s, "
              f"losses {', '.join(f'{x:.7f}' for x in losses[variant])}")
    print(f"median s/step: today {base:.2f}, {args.same_process} {other:.2f}: {other / base:.3f}x")


def worker(args) -> None:
    """One variant in this process: loss and gradients once, then timed train steps; JSON to stdout."""
    variant = args.worker
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if variant == "graph-kernel":
        ms.set_context(enable_graph_kernel=True)
    if variant.startswith("threads-"):
        ms.device_context.cpu.op_tuning.threads_num(int(variant.split("-")[1]))
    if variant.startswith("inter-op-"):
        ms.set_context(inter_op_parallel_num=int(variant.split("-")[2]))
    hp = train_preset(args)
    net, note = build_variant(variant, hp)
    names = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    data, label = batch(variant, hp, args.crop)

    result = {"variant": variant, "note": note, "params": len(names)}
    with_loss = NetWithLoss(net, SegmentationLoss(hp.num_classes, hp.ignore_label))
    with_loss.set_train()
    trainable = net.trainable_params()
    if args.grads_out:
        t0 = time.perf_counter()
        loss, grads = LossAndGrads(with_loss, ms.ParameterTuple(trainable))(data, label)
        result["grad_s"] = time.perf_counter() - t0
        result["loss"] = float(loss.asnumpy())
        np.savez(args.grads_out, **{p.name: g.asnumpy() for p, g in zip(trainable, grads)})
        del grads
    cell, _ = build_train_cell(net, hp, learning_rates("cos", hp.base_lr, 100, 1))
    if variant.startswith("jit-"):
        cell.set_jit_config(ms.JitConfig(jit_level=variant.split("-")[1]))
    losses, times = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        losses.append(float(cell(data, label).asnumpy()))
        if i:
            times.append(time.perf_counter() - t0)
        else:
            result["first_step_s"] = time.perf_counter() - t0
    result.update(times=times, step_losses=losses, names=names,
                  maxrss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print("RESULT " + json.dumps(result), flush=True)


def run_variant(variant: str, args, grads_out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--depth", str(args.depth),
           "--crop", str(args.crop), "--steps", str(args.steps), "--grads-out", str(grads_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "[WARNING]" not in ln]
    return {"variant": variant, "error": (lines[-1] if lines else f"exit code {proc.returncode}")[:160]}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b| (0 when both are zero)."""
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / scale if scale else diff


def grad_error(path: Path, ref_path: Path) -> tuple:
    """(worst per-parameter relative error, its parameter name, relative error of all gradients as
    one vector: |g - g_ref|_2 / |g_ref|_2) of the gradients at `path` vs `ref_path`."""
    worst, name, diff2, ref2 = 0.0, "", 0.0, 0.0
    with np.load(path) as a, np.load(ref_path) as b:
        for key in b.files:
            err = rel_err(a[key], b[key])
            if err > worst:
                worst, name = err, key
            diff2 += float(np.sum((a[key].astype(np.float64) - b[key]) ** 2))
            ref2 += float(np.sum(b[key].astype(np.float64) ** 2))
    return worst, name, (diff2 / ref2) ** 0.5 if ref2 else diff2 ** 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--crop", type=int, default=513)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=1, help="run the variant list this many times, interleaved")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--same-process", metavar="VARIANT",
                   help="time VARIANT against today in this one process, steps alternated (needs the "
                        "memory of both; RefineNet-101 at 513: today 11.6 GiB, winograd 8.7 GiB)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--grads-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.same_process == "today":
        p.error("--same-process times a variant against today: name another variant")
    if args.same_process:
        same_process(args)
        return
    variants = args.variants if args.variants[0] == "today" else ["today"] + args.variants
    results = {v: {"times": []} for v in variants}
    print(f"RefineNet-{args.depth}, input 1x3x{args.crop}x{args.crop}, bn_mode frozen (r1), batch 1, "
          f"{args.steps} timed steps x {args.rounds} round(s) per variant, graph mode, one child process "
          "per variant and round; BN parameters and moving statistics set to seeded random values",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in variants:
                grads = Path(tmp) / f"{v}.npz"
                res = run_variant(v, args, grads)
                if "error" in res:
                    results[v]["error"] = res["error"]
                    print(f"  round {r + 1} {v}: fails: {res['error']}", flush=True)
                    continue
                times = res.pop("times")
                results[v]["times"] += times
                print(f"  round {r + 1} {v}: steps {', '.join(f'{t:.2f}' for t in times)} s, first step "
                      f"{res['first_step_s']:.1f} s, max RSS {res['maxrss_gib']:.1f} GiB", flush=True)
                if r == 0:
                    results[v].update(res)
                    if v != "today" and "error" not in results["today"]:
                        results[v]["grad_err"] = grad_error(grads, Path(tmp) / "today.npz")
        base = results["today"]
        base_s = statistics.median(base["times"]) if base["times"] else None
        print()
        print("| variant | median s/step | vs today | loss rel. err | step losses rel. err | "
              "worst grad rel. err (parameter) | all grads rel. err (L2) | names, shapes |")
        print("|---|---|---|---|---|---|---|---|")
        for v in variants:
            res = results[v]
            if not res["times"]:
                print(f"| {v} | fails: {res.get('error', '')} | | | | | | |")
                continue
            med = statistics.median(res["times"])
            ratio = f"{med / base_s:.3f}x" if base_s else ""
            if v == "today" or "loss" not in base:
                errs = f"loss {res.get('loss', float('nan')):.7f} | | |" if v == "today" else " | | |"
                same = f"{res['params']} (reference)" if v == "today" else ""
            else:
                loss_err = abs(res["loss"] - base["loss"]) / abs(base["loss"])
                step_err = max(abs(a - b) / abs(b) for a, b in zip(res["step_losses"], base["step_losses"]))
                g, gname, g_all = res["grad_err"]
                errs = f"{loss_err:.1e} | {step_err:.1e} | {g:.1e} ({gname}) | {g_all:.1e}"
                same = "same" if res["names"] == base["names"] else "DIFFERENT"
            note = f" ({res['note']})" if res.get("note") else ""
            print(f"| {v}{note} | {med:.2f} | {ratio} | {errs} | {same} |")


if __name__ == "__main__":
    main()
