"""Evaluate exported ONNX RefineNets with ONNX Runtime (`refinenet-infer-onnx`).

Same preprocessing, test-time flip/scales and metric as `refinenet-eval` (`refinenet.evaluation`).
An exported model has a fixed input (batch, 3, S, S), so the batch size is the model's, and each
scale needs a model exported for its input size int((crop - 1) * scale) + 1: pass one `--onnx`
file per scale. MindSpore is not needed. Also `python -m refinenet.infer_onnx`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from refinenet.data.errors import DataError
from refinenet.evaluation import (
    ModelMismatch,
    arrange_models,
    load_image_list,
    run_exported_evaluation,
)
from refinenet.export import UsageError, check_writable

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FLAG, FORMAT = "--onnx", "ONNX"


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX Runtime session and the fixed shapes of its single input and output."""

    path: str
    session: object
    input_name: str
    batch: Optional[int]
    size: int
    num_classes: Optional[int]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-infer-onnx", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--onnx", required=True, nargs="+",
                   help="exported model(s); with several --scales, one model per scale's input size")
    p.add_argument("--data-lst", required=True, help="list file of '<image> <gray label png>' lines")
    p.add_argument("--batch-size", type=int, help="must equal the models' batch size (default: theirs)")
    p.add_argument("--crop-size", type=int, help="input size at scale 1 (default: the first model's)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, logits summed")
    p.add_argument("--flip", action="store_true", help="add the logits of the horizontally flipped input")
    p.add_argument("--provider", default="cpu", choices=sorted(PROVIDERS))
    p.add_argument("--num-classes", type=int, help="must equal the models' output channels (default: theirs)")
    p.add_argument("--ignore-label", type=int, default=255)
    p.add_argument("--output", help="write the result as JSON to this file")
    return p


def _static(dim) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


def open_model(path: str, provider: str) -> OnnxModel:
    """An inference session on `provider`; `UsageError` for a missing/invalid file or an unusable provider."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UsageError(f"--onnx: {path} does not exist or is not a file")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UsageError(f"--provider {provider}: this ONNX Runtime has no {wanted} (available: "
                         f"{', '.join(available)}); --provider cuda needs onnxruntime-gpu and its CUDA")
    try:
        session = ort.InferenceSession(path, providers=[wanted])
    except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types for invalid files)
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--onnx: {path} cannot be loaded by ONNX Runtime: {problem}") from None
    if wanted not in session.get_providers():
        raise UsageError(f"--provider {provider}: {wanted} could not be initialised for {path}")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
        raise UsageError(f"--onnx: {path} is not an exported RefineNet (one (N, 3, H, W) input, "
                         "(N, C, H, W) output)")
    batch, channels, height, width = inputs[0].shape
    if _static(height) is None or _static(width) is None or height != width or channels != 3:
        raise UsageError(f"--onnx: {path} takes input {inputs[0].shape}; evaluation feeds (N, 3, S, S) "
                         "crops, export with --crop-size S")
    return OnnxModel(path, session, inputs[0].name, _static(batch), height, _static(outputs[0].shape[1]))


def check_inputs(args: argparse.Namespace) -> None:
    """The options every exported-model evaluation shares: data list, scales, crop size, ignore label,
    output; `UsageError` naming the option, or a `DataError` from reading the list."""
    if not Path(args.data_lst).is_file():
        raise UsageError(f"--data-lst: {args.data_lst} does not exist or is not a file")
    if any(s <= 0 for s in args.scales):
        raise UsageError(f"--scales: must be positive, got {args.scales}")
    if args.crop_size is not None and args.crop_size < 1:
        raise UsageError(f"--crop-size: must be at least 1, got {args.crop_size}")
    if not 0 <= args.ignore_label < 256:
        raise UsageError(f"--ignore-label: must be in [0, 256), got {args.ignore_label}")
    if args.output:
        check_writable(Path(args.output), "--output")
    load_image_list(args.data_lst)


def prepare(args: argparse.Namespace) -> Tuple[Dict[int, OnnxModel], int, int, int]:
    """(model per input size, crop size, batch size, class count), or `UsageError`/`ModelMismatch`."""
    check_inputs(args)
    models = [open_model(path, args.provider) for path in args.onnx]
    return arrange_models(models, args, flag=FLAG, file_format=FORMAT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        by_size, crop_size, batch, classes = prepare(args)
    except (UsageError, ModelMismatch, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return run_exported_evaluation(by_size, args, crop_size=crop_size, batch_size=batch, num_classes=classes,
                                   engine=args.provider)


if __name__ == "__main__":
    sys.exit(main())
