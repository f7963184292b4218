"""oneDNN ISA cap: a convolution train step with ONEDNN_MAX_CPU_ISA=AVX2 vs the library default.

Each variant runs in its own process (the variable is read when MindSpore loads). Prints the
seconds per step of each, their ratio, and the oneDNN convolution implementations each ran
(ONEDNN_VERBOSE): with AVX-512 the NCHW forward and backward-data convolutions go to
`jit_uni_ncsp:conv+ref`, a reference kernel behind a layout wrapper.
Usage: python benchmarks/cpu_isa.py [--size 129] [--steps 3]
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import mindspore as ms
from mindspore import nn
size, steps = int(sys.argv[1]), int(sys.argv[2])
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
ms.set_seed(0)
layers = []
ch = 3
for out in (64, 128, 256, 256):
    layers += [nn.Conv2d(ch, out, 3, pad_mode="pad", padding=1), nn.BatchNorm2d(out), nn.ReLU()]
    ch = out
net = nn.SequentialCell(layers + [nn.Conv2d(ch, 21, 1)])
loss = nn.WithLossCell(net, nn.MSELoss())
step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9))
x = ms.Tensor(np.random.rand(1, 3, size, size).astype(np.float32))
y = ms.Tensor(np.random.rand(1, 21, size, size).astype(np.float32))
step(x, y)  # compile
t0 = time.perf_counter()
for _ in range(steps):
    step(x, y).asnumpy()
print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / steps}))
"""


def run_variant(isa, size, steps):
    """(seconds per step, {propagation: oneDNN convolution implementations}) with the given ISA cap."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    impls = {}
    for line in out.stdout.splitlines():
        f = line.split(",")
        if ",primitive,exec," in line and f[5] == "convolution":
            impls.setdefault(f[7], set()).add(f[6])
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"], impls


def describe(impls):
    return "; ".join(f"{prop}: {', '.join(sorted(names))}" for prop, names in sorted(impls.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    capped, capped_impls = run_variant("AVX2", args.size, args.steps)
    default, default_impls = run_variant(None, args.size, args.steps)
    print(f"conv train step 1x3x{args.size}x{args.size}: ONEDNN_MAX_CPU_ISA=AVX2 {capped:.3f} s, "
          f"library default {default:.3f} s, default/AVX2 = {default / capped:.1f}x")
    print(f"oneDNN convolutions with AVX2: {describe(capped_impls)}")
    print(f"oneDNN convolutions with the library default: {describe(default_impls)}")


if __name__ == "__main__":
    main()
