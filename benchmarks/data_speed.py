"""Training input pipeline throughput at crop 513 against what a train step consumes.

Writes a synthetic dataset with VOC-sized images (300-500 px), converts it to MindRecord, and times
`build_train_dataset` batches (after one warm-up batch). The consumption side is a RefineNet train
step per image: measured when `refinenet.model.build_refinenet` exists and `--measure-step` is given,
otherwise `--step-seconds` (default 2.1 s/image: the ResNet-101 backbone alone at 513x513 on the
development machine's CPU, a lower bound for the RefineNet-101 step). The ratio says how many times
faster the pipeline produces images than training eats them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def pipeline_rate(source: str, *, batch_size: int, crop: int, workers: int, batches: int) -> float:
    from refinenet.data.pipeline import build_train_dataset

    dataset = build_train_dataset(source, batch_size=batch_size, crop_size=crop, workers=workers)
    needed = batches + 1
    epochs = -(-needed // dataset.get_dataset_size())
    it = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    seen, start = 0, None
    for _ in range(epochs):
        for _batch in it:
            seen += 1
            if seen == 1:
                start = time.perf_counter()
            if seen == needed:
                return batches * batch_size / (time.perf_counter() - start)
    raise RuntimeError("dataset ended early")


def measured_step_seconds(crop: int, depth: int) -> float:
    """Seconds per image of one RefineNet train step (batch 1), or raise if the model is unavailable."""
    import mindspore as ms
    from mindspore import nn

    from refinenet.model import build_refinenet

    net = build_refinenet(depth=depth, num_classes=21)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    class WithLoss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.net = net

        def construct(self, x, y):
            logits = self.net(x).transpose(0, 2, 3, 1).reshape(-1, 21)
            return loss(logits, y.reshape(-1))

    step = nn.TrainOneStepCell(WithLoss(), nn.Momentum(net.trainable_params(), 1e-4, 0.9))
    x = ms.Tensor(np.random.default_rng(0).normal(size=(1, 3, crop, crop)).astype(np.float32))
    y = ms.Tensor(np.zeros((1, crop, crop), dtype=np.int32))
    step(x, y)
    start = time.perf_counter()
    for _ in range(2):
        step(x, y)
    return (time.perf_counter() - start) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--step-seconds", type=float, default=2.1,
                        help="train step seconds per image when not measured (default 2.1)")
    parser.add_argument("--measure-step", action="store_true", help="time a RefineNet train step here")
    parser.add_argument("--depth", type=int, default=101)
    args = parser.parse_args()

    from refinenet.data import synth
    from refinenet.data.lists import build_lists
    from refinenet.data.mindrecord import write_mindrecord

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        synth.generate(root, num_images=args.images, seed=0, min_size=300, max_size=500)
        lists = build_lists(root)
        write_mindrecord(None, lists.sbd_train, root / "sbdonly", shards=2)
        sources = {"list": str(lists.sbd_train), "mindrecord": str(root / "sbdonly0")}
        rates = {}
        for kind, source in sources.items():
            for workers in args.workers:
                rates[kind, workers] = pipeline_rate(source, batch_size=args.batch_size, crop=args.crop,
                                                     workers=workers, batches=args.batches)

    step, how = args.step_seconds, "given (--step-seconds; ResNet-101 at 513 measured on this machine)"
    if args.measure_step:
        try:
            step, how = measured_step_seconds(args.crop, args.depth), f"measured here (depth {args.depth})"
        except ImportError as exc:
            how = f"given: model not available ({exc})"
    need = 1.0 / step
    print(f"crop {args.crop}, batch {args.batch_size}, {args.batches} timed batches, images 300-500 px")
    print(f"train step: {step:.3f} s/image ({how}) -> consumes {need:.2f} images/s")
    print(f"{'source':<11} {'workers':>7} {'images/s':>9} {'vs step':>8}")
    for (kind, workers), rate in rates.items():
        print(f"{kind:<11} {workers:>7} {rate:>9.1f} {rate / need:>7.1f}x")


if __name__ == "__main__":
    main()
