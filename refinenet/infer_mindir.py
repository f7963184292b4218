"""Evaluate exported MINDIR RefineNets with MindSpore's GraphCell (`refinenet-infer-mindir`).

Same preprocessing, test-time flip/scales, metric and report as `refinenet-eval` and
`refinenet-infer-onnx` (`refinenet.evaluation`). A MINDIR holds the network and its weights with a
fixed input (batch, 3, S, S): the batch size is the model's, and each scale needs a model exported for
its input size int((crop - 1) * scale) + 1, so pass one `--mindir` file per scale. No checkpoint is
needed. Also `python -m refinenet.infer_mindir`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from refinenet.data.errors import DataError
from refinenet.evaluation import (
    ModelMismatch,
    arrange_models,
    run_exported_evaluation,
)
from refinenet.export import UsageError, use_device
from refinenet.infer_onnx import check_inputs
from refinenet.presets import DEVICES

FLAG, FORMAT = "--mindir", "MINDIR"


@dataclass(frozen=True)
class MindirModel:
    """A loaded MINDIR graph and the fixed shapes of its single input and output."""

    path: str
    cell: object
    batch: Optional[int]
    size: int
    num_classes: Optional[int]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import mindspore as ms

        return self.cell(ms.Tensor(batch)).asnumpy()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-infer-mindir", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mindir", required=True, nargs="+",
                   help="exported model(s); with several --scales, one model per scale's input size")
    p.add_argument("--data-lst", required=True, help="list file of '<image> <gray label png>' lines")
    p.add_argument("--batch-size", type=int, help="must equal the models' batch size (default: theirs)")
    p.add_argument("--crop-size", type=int, help="input size at scale 1 (default: the first model's)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, logits summed")
    p.add_argument("--flip", action="store_true", help="add the logits of the horizontally flipped input")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--num-classes", type=int, help="must equal the models' output channels (default: theirs)")
    p.add_argument("--ignore-label", type=int, default=255)
    p.add_argument("--output", help="write the result as JSON to this file")
    return p


def _dims(values) -> Tuple[Optional[int], ...]:
    return tuple(int(d) if d > 0 else None for d in values)


def mindir_shapes(path: str) -> Tuple[List[Tuple[Optional[int], ...]], List[Tuple[Optional[int], ...]]]:
    """(input shapes, output shapes) recorded in a MINDIR file; None for a dimension that is not fixed."""
    from mindspore.train.mind_ir_pb2 import ModelProto

    model = ModelProto()
    try:
        model.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # noqa: BLE001  (protobuf raises its own DecodeError)
        raise UsageError(f"{FLAG}: {path} is not a MINDIR file: {exc}") from None
    if model.producer_name != "MindSpore" or not model.ir_version or not model.HasField("graph"):
        raise UsageError(f"{FLAG}: {path} is not a MINDIR file (no MindSpore graph in it)")
    graph = model.graph
    inputs = [_dims(t.dims) for i in graph.input for t in i.tensor]
    outputs = [_dims(t.dims) for o in graph.output for t in o.tensor]
    return inputs, outputs


def open_model(path: str) -> MindirModel:
    """The MINDIR as a callable GraphCell on MindSpore's current device; `UsageError` for a missing or
    invalid file or one that is not an exported RefineNet."""
    import mindspore as ms

    if not Path(path).is_file():
        raise UsageError(f"{FLAG}: {path} does not exist or is not a file")
    inputs, outputs = mindir_shapes(path)
    if len(inputs) != 1 or len(inputs[0]) != 4 or len(outputs) != 1 or len(outputs[0]) != 4:
        raise UsageError(f"{FLAG}: {path} is not an exported RefineNet (one (N, 3, H, W) input, "
                         "(N, C, H, W) output)")
    batch, channels, height, width = inputs[0]
    if height is None or height != width or channels != 3:
        raise UsageError(f"{FLAG}: {path} takes input {inputs[0]}; evaluation feeds (N, 3, S, S) crops, "
                         "export with --crop-size S")
    try:
        cell = ms.nn.GraphCell(ms.load(os.fspath(path)))
    except Exception as exc:  # noqa: BLE001  (MindSpore raises RuntimeError/ValueError for bad graphs)
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{FLAG}: {path} cannot be loaded by MindSpore: {problem}") from None
    return MindirModel(os.fspath(path), cell, batch, height, outputs[0][1])


def use_graph_mode(device: str) -> None:
    """GraphCell runs in graph mode on the chosen device."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device(device)


def prepare(args: argparse.Namespace) -> Tuple[Dict[int, MindirModel], int, int, int]:
    """(model per input size, crop size, batch size, class count), or `UsageError`/`ModelMismatch`."""
    check_inputs(args)
    use_graph_mode(args.device)
    models = [open_model(path) for path in args.mindir]
    return arrange_models(models, args, flag=FLAG, file_format=FORMAT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        by_size, crop_size, batch, classes = prepare(args)
    except (UsageError, ModelMismatch, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return run_exported_evaluation(by_size, args, crop_size=crop_size, batch_size=batch, num_classes=classes,
                                   engine=f"MindSpore ({args.device})")


if __name__ == "__main__":
    sys.exit(main())
