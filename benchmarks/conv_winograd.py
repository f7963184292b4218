"""One 3x3 convolution, fwd+bwd: MindSpore's Conv2D against Winograd F(2x2,3x3) built from MindSpore ops.

`python benchmarks/conv_winograd.py [--channels 256] [--size 129] [--rounds 5]` — the decoder's
costliest convolution (256 -> 256 channels at 129x129, batch 1). The Winograd form computes the
same convolution with 2.25x fewer multiplications: the input transform is a fixed 4x4 stride-2
convolution over each channel, the 16 products a batched matmul with the transformed weights
G w G^T (first form) or one 16-group 1x1 convolution between two row gathers (second form:
`refinenet.model.winograd.WinogradConv2d`, what RefineNet trains with on CPU), the output
transform a fixed 2x2 stride-2 transposed convolution (which also crops). Below 256 channels or
65x65 the second form runs the plain convolution, so `--channels 128` times Conv2D twice.
Both are differentiated by MindSpore. Prints the relative error of the output, the input gradient and
the weight gradient against Conv2D, and the median time of loss-and-gradients of each, measured
interleaved in one process.
"""
from __future__ import annotations  # noqa: I001  (refinenet sets CPU defaults before MindSpore loads)

import argparse
import statistics
import time

import numpy as np

import refinenet  # noqa: F401
import mindspore as ms
from mindspore import Tensor, nn, ops

from refinenet.model.winograd import KERNEL_IN, KERNEL_OUT, KERNEL_W, WinogradConv2d


class Direct(nn.Cell):
    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.weight = ms.Parameter(Tensor(weight), name="weight")
        self.conv = ops.Conv2D(weight.shape[0], 3, pad_mode="pad", pad=1)

    def construct(self, x):
        return self.conv(x, self.weight)


class WinogradBatchedMatmul(nn.Cell):
    """F(2x2,3x3) with the 16 products as one batched matmul (batch 1, stride 1, padding 1)."""

    def __init__(self, weight: np.ndarray, height: int, width: int):
        super().__init__()
        self.weight = ms.Parameter(Tensor(weight), name="weight")
        self.k_w, self.k_in, self.k_out = Tensor(KERNEL_W), Tensor(KERNEL_IN), Tensor(KERNEL_OUT)
        self.tiles = ((height + 1) // 2, (width + 1) // 2)
        th, tw = self.tiles
        self.transform_in = ops.Conv2D(16, 4, pad_mode="pad", stride=2,
                                       pad=(1, 2 * th + 1 - height, 1, 2 * tw + 1 - width))
        self.transform_out = ops.Conv2DTranspose(16, 2, pad_mode="pad", stride=2,
                                                 pad=(0, 2 * th - height, 0, 2 * tw - width))
        self.bmm = ops.BatchMatMul()

    def construct(self, x):
        _, cin, h, w = x.shape
        cout = self.weight.shape[0]
        th, tw = self.tiles
        v = self.transform_in(x.reshape(cin, 1, h, w), self.k_in)               # (cin, 16, th, tw)
        v = v.reshape(cin, 16, th * tw).transpose(1, 0, 2)                      # (16, cin, T)
        u = ops.matmul(self.weight.reshape(cout * cin, 9), self.k_w)            # (cout*cin, 16)
        u = u.reshape(cout, cin, 16).transpose(2, 0, 1)                         # (16, cout, cin)
        m = self.bmm(u, v).transpose(1, 0, 2).reshape(cout, 16, th, tw)         # (cout, 16, th, tw)
        return self.transform_out(m, self.k_out, (cout, 1, h, w)).reshape(1, cout, h, w)


class Dot(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, dy):
        return (self.net(x) * dy).sum()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--size", type=int, default=129)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    c, s = args.channels, args.size
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(c, c, 3, 3)) * 0.05).astype(np.float32)
    x = Tensor(rng.normal(size=(1, c, s, s)).astype(np.float32))
    dy = Tensor(rng.normal(size=(1, c, s, s)).astype(np.float32))
    production = WinogradConv2d(c, c)
    production.weight.set_data(Tensor(weight))
    production.set_train()
    nets = {"Conv2D": Direct(weight),
            "Winograd, batched-matmul products": WinogradBatchedMatmul(weight, s, s),
            "Winograd, grouped 1x1 products (WinogradConv2d)": production}
    grads, outs = {}, {}
    for name, net in nets.items():
        grads[name] = ops.GradOperation(get_all=True, get_by_list=True)(
            Dot(net), ms.ParameterTuple(net.trainable_params()))
        (gx, _), (gw,) = grads[name](x, dy)
        outs[name] = (net(x).asnumpy(), gx.asnumpy(), gw.asnumpy())
    times = {name: [] for name in nets}
    for _ in range(args.rounds):
        for name, grad in grads.items():
            t0 = time.perf_counter()
            grad(x, dy)[1][0].asnumpy()
            times[name].append(time.perf_counter() - t0)
    ref = outs["Conv2D"]
    base = statistics.median(times["Conv2D"])
    print(f"3x3 convolution {c} -> {c} channels at {s}x{s}, batch 1, loss and gradients, "
          f"median of {args.rounds} interleaved rounds")
    print("| formulation | ms | vs Conv2D | output rel. err | input grad rel. err | weight grad rel. err |")
    print("|---|---|---|---|---|---|")
    for name, out in outs.items():
        med = statistics.median(times[name])
        errs = " | ".join(f"{rel_err(a, b):.1e}" for a, b in zip(out, ref))
        print(f"| {name} | {med * 1e3:.0f} | {med / base:.2f}x | {errs} |")


if __name__ == "__main__":
    main()
