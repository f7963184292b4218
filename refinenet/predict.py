"""Segment images with a checkpoint or an exported ONNX or MINDIR model (`refinenet-predict`).

For each IMAGE writes DIR/<name>.png, the class of every pixel as a VOC palette PNG, and
DIR/<name>_overlay.jpg, the image with the non-background classes blended in their VOC colours.
Preprocessing and the logits-to-mask step are those of evaluation (`refinenet.evaluation`).
Also `python -m refinenet.predict`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from refinenet import checkpoints as ck
from refinenet.evaluation import ExportedModel, _predict_scale
from refinenet.export import DEPTHS, UsageError, check_writable, use_device
from refinenet.palette import palette_bytes, voc_colormap
from refinenet.presets import DEVICES

Predictor = Callable[[np.ndarray], np.ndarray]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="checkpoint file or latest:DIR")
    model.add_argument("--onnx", help="exported ONNX model (its input size and batch are used)")
    model.add_argument("--mindir", help="exported MINDIR model (its input size and batch are used)")
    p.add_argument("-o", "--output-dir", required=True, help="folder for <name>.png and <name>_overlay.jpg")
    p.add_argument("--depth", type=int, default=101, choices=DEPTHS, help="with --ckpt")
    p.add_argument("--num-classes", type=int, default=21, help="with --ckpt")
    p.add_argument("--crop-size", type=int,
                   help="network input size (default 513; with --onnx/--mindir the model's)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="with --ckpt or --mindir")
    p.add_argument("--flip", action="store_true", help="add the logits of the horizontally flipped image")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay")
    return p


def read_images(paths: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    """(output name, BGR image) per input; `UsageError` for an unreadable file or two inputs of one name."""
    out, seen = [], {}
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise UsageError(f"IMAGE: {path} is missing or not a readable image")
        name = Path(path).stem
        if name in seen:
            raise UsageError(f"IMAGE: {seen[name]} and {path} would both be written as {name}.png")
        seen[name] = path
        out.append((name, image))
    return out


def check_args(args: argparse.Namespace) -> None:
    if args.crop_size is not None and args.crop_size < 1:
        raise UsageError(f"--crop-size: must be at least 1, got {args.crop_size}")
    if args.num_classes < 1:
        raise UsageError(f"--num-classes: must be at least 1, got {args.num_classes}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha: must be in [0, 1], got {args.alpha}")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir: {out} exists and is not a directory")
    check_writable(out / "x", "--output-dir")


def checkpoint_predictor(args: argparse.Namespace) -> Tuple[Predictor, int, int, int]:
    """(logits function, batch size, input size, classes) of the network with the checkpoint's weights."""
    import mindspore as ms

    from refinenet import weights
    from refinenet.model import build_refinenet

    ckpt_path = weights.resolve_checkpoint(args.ckpt, what="--ckpt")
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device(args.device)
    net = build_refinenet(num_classes=args.num_classes, depth=args.depth, bn_mode="frozen")
    report = weights.load_into(net, ckpt_path, kind="refinenet", strict_shapes=False)
    try:
        report.require_exact()
    except weights.CheckpointLoadError as exc:
        raise weights.CheckpointLoadError(exc.path, exc.tensor, f"{exc.problem}; the network is a depth-"
                                          f"{args.depth} RefineNet with {args.num_classes} classes") from None
    net.set_train(False)
    return (lambda x: net(ms.Tensor(x)).asnumpy()), 1, args.crop_size or 513, args.num_classes


def exported_predictor(model: ExportedModel, flag: str, crop_size: Optional[int]
                       ) -> Tuple[Predictor, int, int, int]:
    """An exported model's fixed batch, input size and classes; `UsageError` where they do not fit."""
    if crop_size is not None and crop_size != model.size:
        raise UsageError(f"--crop-size {crop_size}: {model.path} takes {model.size}x{model.size} input")
    if model.num_classes is None:
        raise UsageError(f"{flag}: {model.path} has no fixed class count in its output")
    return model, model.batch or 1, model.size, model.num_classes


def onnx_predictor(args: argparse.Namespace) -> Tuple[Predictor, int, int, int]:
    from refinenet.infer_onnx import open_model

    return exported_predictor(open_model(args.onnx, "cpu"), "--onnx", args.crop_size)


def mindir_predictor(args: argparse.Namespace) -> Tuple[Predictor, int, int, int]:
    from refinenet.infer_mindir import open_model, use_graph_mode

    use_graph_mode(args.device)
    return exported_predictor(open_model(args.mindir), "--mindir", args.crop_size)


def make_predictor(args: argparse.Namespace) -> Tuple[Predictor, int, int, int]:
    """(logits function, batch size, input size, classes) of the model the command line names."""
    if args.onnx:
        return onnx_predictor(args)
    if args.mindir:
        return mindir_predictor(args)
    return checkpoint_predictor(args)


def write_prediction(folder: Path, name: str, image_bgr: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    """<name>.png as a palette PNG of the class indices, <name>_overlay.jpg as image and colours blended."""
    png = Image.fromarray(mask, mode="P")
    png.putpalette(palette_bytes())
    png.save(folder / f"{name}.png")
    rgb = image_bgr[:, :, ::-1].astype(np.float32)
    colours = voc_colormap()[mask].astype(np.float32)
    blend = np.where((mask > 0)[:, :, None], (1 - alpha) * rgb + alpha * colours, rgb)
    Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), mode="RGB").save(
        folder / f"{name}_overlay.jpg", quality=90)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        images = read_images(args.images)
        predictor, batch, size, classes = make_predictor(args)
    except (UsageError, ck.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(images), batch):
        chunk = images[first:first + batch]
        logits = _predict_scale(predictor, [img for _, img in chunk], batch, size, args.flip, classes)
        for (name, image), probs in zip(chunk, logits):
            write_prediction(folder, name, image, probs.argmax(axis=2).astype(np.uint8), args.alpha)
            print(f"wrote {folder / name}.png and {name}_overlay.jpg", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
