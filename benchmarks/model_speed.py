"""RefineNet speed: MindSpore forward and train step, ONNX Runtime inference, FLOPs vs the matmul peak.

One process, in this order: the float32 matmul peak of numpy (GFLOP/s, the yardstick), MindSpore
graph-mode forward, ONNX export of the same weights, MindSpore train step (batch 1, momentum, the
project's loss), ONNX Runtime (CPU) inference, then the forward pass's multiply-add FLOPs counted from
the ONNX graph (Conv and MatMul) as a percentage of the matmul peak (measured at the start and the
end, the larger used: the machine may be shared). Peak RSS is printed after each phase (it only grows).
Usage: python benchmarks/model_speed.py [--depth 101] [--size 513] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import refinenet  # noqa: E402,F401  (CPU defaults before MindSpore runs a kernel)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeat: int) -> list:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(n: int = 2048, repeat: int = 10) -> float:
    """Best float32 GFLOP/s of numpy's matmul (its BLAS, all threads) on n x n matrices."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(timed(lambda: a @ b, repeat))
    return 2.0 * n ** 3 / best / 1e9


def _shape(dims) -> list:
    return [d.dim_value for d in dims]


def onnx_forward_flops(path: str) -> dict:
    """Multiply-add FLOPs (2 per MAC) of the Conv and MatMul nodes of an ONNX graph with static shapes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = model.graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        shapes[vi.name] = _shape(vi.type.tensor_type.shape.dim)
    conv = matmul = 0
    for node in g.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = shapes[node.input[1]]
            conv += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "MatMul":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            out = shapes[node.output[0]]
            matmul += 2 * int(np.prod(out)) * a[-1]
            assert a[-1] == b[-2]
    return {"conv": conv, "matmul": matmul, "total": conv + matmul}


def build(depth: int):
    import mindspore as ms

    from refinenet.model import build_refinenet

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    return build_refinenet(num_classes=21, depth=depth)


def first_and_runs(fn, repeat: int):
    """(seconds of the first call, which compiles, [seconds of each further call])."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, timed(fn, repeat)


def measure_train_step(net, x, size: int, steps: int):
    import mindspore as ms
    from mindspore import nn

    from refinenet.loss import NetWithLoss, SegmentationLoss

    net.set_train(True)
    step = nn.TrainOneStepCell(NetWithLoss(net, SegmentationLoss(21)),
                               nn.Momentum(net.trainable_params(), learning_rate=1e-4, momentum=0.9))
    step.set_train()
    labels = np.random.default_rng(2).integers(0, 21, (1, size, size)).astype(np.int32)
    y = ms.Tensor(labels)
    return first_and_runs(lambda: step(x, y).asnumpy(), steps)


def measure_ort(onnx_path: str, x: np.ndarray, repeat: int):
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return first_and_runs(lambda: session.run(None, feed), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each phase (after one warm-up)")
    parser.add_argument("--train-steps", type=int, default=2)
    args = parser.parse_args()
    shape = (1, 3, args.size, args.size)
    r: dict = {"depth": args.depth, "input": "x".join(map(str, shape)), "cpus": os.cpu_count()}

    peak = matmul_peak_gflops()
    r["numpy_matmul_peak_gflops"] = round(peak, 1)
    print(f"numpy float32 matmul peak (2048^3): {peak:.1f} GFLOP/s", flush=True)

    import mindspore as ms

    net = build(args.depth)
    net.set_train(False)
    x_np = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x = ms.Tensor(x_np)
    compile_s, ms_times = first_and_runs(lambda: net(x).asnumpy(), args.repeat)
    ms_forward = min(ms_times)
    r.update(ms_forward_first_s=round(compile_s, 2), ms_forward_s=round(ms_forward, 3),
             ms_forward_runs=_rounded(ms_times), rss_after_forward_mib=round(peak_rss_mib()))
    print(f"MindSpore forward {shape}: {ms_forward:.3f} s (runs {_rounded(ms_times)}; first call with "
          f"compile {compile_s:.1f} s); peak RSS {peak_rss_mib():.0f} MiB", flush=True)

    with tempfile.TemporaryDirectory(prefix="model_speed-") as tmp:
        onnx_path = export_onnx(net, args.depth, args.size, tmp)
        train_first, train_times = measure_train_step(net, x, args.size, args.train_steps)
        r.update(train_step_first_s=round(train_first, 2), train_step_s=round(min(train_times), 3),
                 train_step_runs=_rounded(train_times), rss_after_train_mib=round(peak_rss_mib()))
        print(f"MindSpore train step {shape}: {min(train_times):.3f} s (runs {_rounded(train_times)}; first "
              f"call with compile {train_first:.1f} s); peak RSS {peak_rss_mib():.0f} MiB", flush=True)

        ort_first, ort_times = measure_ort(onnx_path, x_np, args.repeat)
        ort_forward = min(ort_times)
        r.update(ort_forward_first_s=round(ort_first, 2), ort_forward_s=round(ort_forward, 3),
                 ort_forward_runs=_rounded(ort_times), rss_after_ort_mib=round(peak_rss_mib()))
        print(f"ONNX Runtime forward {shape}: {ort_forward:.3f} s (runs {_rounded(ort_times)}); peak RSS "
              f"{peak_rss_mib():.0f} MiB", flush=True)
        flops = onnx_forward_flops(onnx_path)

    peak_end = matmul_peak_gflops()
    print(f"numpy float32 matmul peak again at the end: {peak_end:.1f} GFLOP/s (the larger is used)",
          flush=True)
    peak = max(peak, peak_end)
    r["numpy_matmul_peak_gflops"] = round(peak, 1)
    gflop = flops["total"] / 1e9
    ms_ips, ort_ips = 1.0 / ms_forward, 1.0 / ort_forward
    r.update(forward_gflop=round(gflop, 1), conv_gflop=round(flops["conv"] / 1e9, 1),
             matmul_gflop=round(flops["matmul"] / 1e9, 2), ms_images_per_s=round(ms_ips, 3),
             ort_images_per_s=round(ort_ips, 3), ort_over_ms=round(ort_ips / ms_ips, 2),
             ms_forward_pct_of_peak=round(100 * gflop / ms_forward / peak, 1),
             ort_forward_pct_of_peak=round(100 * gflop / ort_forward / peak, 1),
             train_step_pct_of_peak_at_3x_forward=round(100 * 3 * gflop / min(train_times) / peak, 1),
             peak_rss_mib=round(peak_rss_mib()))
    print(f"forward FLOPs: {gflop:.1f} GFLOP (Conv {flops['conv'] / 1e9:.1f}, resize MatMul "
          f"{flops['matmul'] / 1e9:.2f})", flush=True)
    print(f"inference images/s: MindSpore {ms_ips:.3f}, ONNX Runtime {ort_ips:.3f}, ORT/MindSpore "
          f"{ort_ips / ms_ips:.2f}x", flush=True)
    print(f"forward GFLOP/s: MindSpore {gflop / ms_forward:.1f} ({r['ms_forward_pct_of_peak']}% of the "
          f"matmul peak), ONNX Runtime {gflop / ort_forward:.1f} ({r['ort_forward_pct_of_peak']}%)",
          flush=True)
    print(json.dumps(r), flush=True)


def _rounded(values) -> list:
    return [round(v, 3) for v in values]


def export_onnx(net, depth: int, size: int, folder: str) -> str:
    """The network with the same weights in its fixed-size form, exported to ONNX."""
    from refinenet.export import ExportSpec, export_network
    from refinenet.model import build_refinenet
    from refinenet.weights import load_into

    fixed = build_refinenet(num_classes=21, depth=depth, input_size=(size, size))
    load_into(fixed, {p.name: p for p in net.get_parameters()}).require_exact()
    fixed.set_train(False)
    spec = ExportSpec(ckpt="(in memory)", file_format="ONNX", batch_size=1, height=size, width=size,
                      depth=depth, num_classes=21, device="cpu", output=Path(folder) / "refinenet.onnx")
    path = export_network(fixed, spec)
    del fixed
    return os.fspath(path)


if __name__ == "__main__":
    main()
