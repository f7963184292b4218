"""Where a RefineNet train step's time goes, per oneDNN primitive: kind, implementation, shape, GFLOP/s.

`python benchmarks/train_step_breakdown.py [--variant today] [--depth 101] [--crop 513] [--top 25]`
runs one variant of benchmarks/train_step_formulation.py in a child process with ONEDNN_VERBOSE=1
(loss and gradients once, one warm-up step, one timed step) and sums the oneDNN execution times of
the timed step: per primitive kind and propagation, then the `--top` costliest (implementation,
propagation, shape) rows with their count and, for convolutions, the GFLOP/s reached. Work that
oneDNN does not run (MindSpore's own kernels: the argmax pools, ReLU, adds, the optimizer) is the
difference between the step time and the oneDNN total.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONV_SHAPE = re.compile(r"(?:g(\d+))?mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)sh\d+dh\d+ph\d+"
                        r"_iw\d+ow(\d+)kw(\d+)")


def conv_flops(shape: str) -> int:
    """Multiply-adds x 2 of one convolution call (any propagation kind: all three cost the same)."""
    m = CONV_SHAPE.match(shape)
    if not m:
        return 0
    groups = int(m.group(1) or 1)
    mb, ic, oc, oh, kh, ow, kw = map(int, m.groups()[1:])
    return 2 * mb * (ic // groups) * oc * oh * ow * kh * kw


def exec_records(text: str) -> list:
    """(primitive, implementation, propagation, shape, ms) of every `primitive,exec` verbose line."""
    out = []
    for line in text.splitlines():
        if ",primitive,exec," not in line:
            continue
        f = line.strip().split(",")
        out.append((f[5], f[6], f[7], f[-2], float(f[-1])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="today")
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--crop", type=int, default=513)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    env = dict(os.environ, ONEDNN_VERBOSE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step_formulation.py"),
                               "--worker", args.variant, "--depth", str(args.depth), "--crop", str(args.crop),
                               "--steps", "1", "--grads-out", str(Path(tmp) / "grads.npz")],
                              capture_output=True, text=True, cwd=REPO, env=env)
    records = exec_records(proc.stdout + proc.stderr)
    if not records:
        sys.exit(f"no oneDNN verbose lines (exit code {proc.returncode})")
    # gradients, warm-up step and timed step run the same primitives: the last third is the timed step
    step = records[-len(records) // 3:]
    result = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), "")
    step_s = re.search(r'"times": \[([0-9.]+)', result)
    total = sum(r[4] for r in step)
    print(f"RefineNet-{args.depth} at {args.crop}x{args.crop}, variant {args.variant}: step "
          f"{float(step_s.group(1)) if step_s else float('nan'):.2f} s with verbose logging, "
          f"oneDNN primitives {total / 1e3:.2f} s")
    by_kind = collections.Counter()
    rows, counts = collections.Counter(), collections.Counter()
    for prim, impl, prop, shape, ms in step:
        by_kind[(prim, prop)] += ms
        rows[(prim, impl, prop, shape)] += ms
        counts[(prim, impl, prop, shape)] += 1
    print("\n| primitive | propagation | s | share of oneDNN time |\n|---|---|---|---|")
    for (prim, prop), ms in by_kind.most_common():
        print(f"| {prim} | {prop} | {ms / 1e3:.2f} | {ms / total:.0%} |")
    print("\n| s | calls | GFLOP/s | implementation | propagation | shape |\n|---|---|---|---|---|---|")
    for key, ms in rows.most_common(args.top):
        prim, impl, prop, shape = key
        flops = conv_flops(shape) * counts[key] if prim == "convolution" else 0
        rate = f"{flops / ms / 1e6:.0f}" if flops else ""
        print(f"| {ms / 1e3:.2f} | {counts[key]} | {rate} | {impl} | {prop} | {shape} |")


if __name__ == "__main__":
    main()
