"""Evaluate a RefineNet checkpoint on a list file: `refinenet-eval` / `python -m refinenet.evaluate`.

Prints per-class IoU and mean IoU in the ModelZoo eval.py format and, with `--output`, writes
them as JSON. Preprocessing, test-time scales/flip and the metric are `refinenet.evaluation`'s.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from refinenet import checkpoints as ck
from refinenet.presets import DEVICES

DEPTHS = (18, 34, 50, 101, 152)
_DEVICE_TARGET = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}


class UsageError(ValueError):
    """Bad command-line input: exit code 2, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-lst", required=True, help="list file of '<image> <gray label png>' lines")
    p.add_argument("--ckpt", required=True, help="checkpoint file or latest:DIR")
    p.add_argument("--output", help="write the result as JSON to this file")
    p.add_argument("--flip", action="store_true", help="add the logits of the horizontally flipped input")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, logits summed")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--depth", type=int, default=101, choices=DEPTHS)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--crop-size", type=int, default=513)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ignore-label", type=int, default=255)
    p.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    return p


def check_args(args: argparse.Namespace) -> None:
    if not Path(args.data_lst).is_file():
        raise UsageError(f"--data-lst: {args.data_lst} does not exist or is not a file")
    for name in ("num_classes", "crop_size", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if any(s <= 0 for s in args.scales):
        raise UsageError(f"--scales: must be positive, got {args.scales}")
    if args.output:
        out = Path(args.output)
        if out.is_dir():
            raise UsageError(f"--output: {out} is a directory")
        parent = out.parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--output: {parent} is not writable")


def load_network(args: argparse.Namespace, ckpt_path: Path):
    """The network in inference mode with the checkpoint's weights; error if none of them fit."""
    import mindspore as ms

    from refinenet.model import build_refinenet

    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(_DEVICE_TARGET[args.device])
    net = build_refinenet(num_classes=args.num_classes, depth=args.depth, bn_mode="frozen")
    params = ck.load_params(ckpt_path, choice=lambda name: not ck.is_optimizer_key(name))
    names = {p.name for p in net.get_parameters()}
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    matching = {k: v for k, v in params.items() if k in names and tuple(v.shape) == shapes[k]}
    missing = sorted(names - set(matching))
    if missing:
        raise UsageError(f"--ckpt: {ckpt_path} does not fit a depth-{args.depth} RefineNet with "
                         f"{args.num_classes} classes: {len(missing)} of {len(names)} parameters missing or "
                         f"of another shape (e.g. {', '.join(missing[:3])})")
    ms.load_param_into_net(net, matching, strict_load=True)
    net.set_train(False)
    return net


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        ref = ck.resolve_ckpt_ref(args.ckpt, what="--ckpt")
        from refinenet.data.listfile import load_image_list

        load_image_list(args.data_lst)
        net = load_network(args, ref.path)
    except (UsageError, ck.CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    import mindspore as ms

    from refinenet.evaluation import evaluate, report_result

    def predict_logits(batch):
        return net(ms.Tensor(batch)).asnumpy()

    print(f"evaluating {ref.path} on {args.data_lst}", flush=True)
    result = evaluate(predict_logits, args.data_lst, batch_size=args.batch_size, crop_size=args.crop_size,
                      scales=args.scales, flip=args.flip, num_classes=args.num_classes,
                      ignore_label=args.ignore_label)
    report_result(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
