"""The evaluation loop shared by the MindSpore and ONNX Runtime evaluators.

Preprocessing, test-time augmentation and the metric follow the ModelZoo eval.py: each image is
resized so its long side equals the crop size of the scale, normalised with the BGR mean/std and
turned to RGB, padded bottom/right with 0 into a fixed (batch, 3, S, S) batch; the logits of the
resized region are resized back to the original size, summed over scales (and flips), argmaxed,
and counted into a confusion histogram.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import cv2
import numpy as np

from refinenet import metrics
from refinenet.data.errors import DataError
from refinenet.data.listfile import load_image_list
from refinenet.palette import IGNORE_LABEL, VOC_CLASSES

__all__ = ["EvalResult", "ExportedModel", "ModelMismatch", "arrange_models", "check_consistent", "evaluate",
           "format_result",
           "load_image_list", "models_by_size", "preprocess_image", "report_result",
           "run_exported_evaluation", "scale_crop_sizes", "BGR_MEAN", "BGR_STD"]

BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.120, 58.395)

PredictLogits = Callable[[np.ndarray], np.ndarray]


class ModelMismatch(ValueError):
    """Exported models that do not fit each other, the scales or the command line: bad input."""


class ExportedModel(Protocol):
    """What evaluation needs of an exported model (ONNX, MINDIR): its file, its fixed input
    (batch, 3, size, size), its class count (None where not fixed) and batch -> logits."""

    path: str
    batch: Optional[int]
    size: int
    num_classes: Optional[int]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalResult:
    """The outcome of one evaluation: IoU per class (NaN where a class never occurs), their mean,
    the confusion histogram hist[gt, pred] and the number of images."""

    per_class_iou: Tuple[float, ...]
    mean_iou: float
    hist: np.ndarray = field(compare=False, repr=False)
    images: int

    def to_json(self, class_names: Optional[Sequence[str]] = None) -> str:
        """JSON text; NaN IoUs become null so any JSON reader accepts it."""
        names = list(class_names) if class_names is not None else _default_names(len(self.per_class_iou))
        return json.dumps({
            "mean_iou": _finite_or_none(self.mean_iou),
            "per_class_iou": [_finite_or_none(v) for v in self.per_class_iou],
            "class_names": names,
            "images": self.images,
            "hist": np.asarray(self.hist).tolist(),
        })


def _finite_or_none(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


def _default_names(num_classes: int) -> List[str]:
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [str(c) for c in range(num_classes)]


def scale_crop_sizes(crop_size: int, scales: Sequence[float]) -> List[int]:
    """Network input size per scale: int((crop - 1) * s) + 1, so 513 stays 513 at scale 1."""
    return [int((crop_size - 1) * s) + 1 for s in scales]


def resize_long_side(image: np.ndarray, long_size: int) -> np.ndarray:
    """Bilinear resize so the long side is `long_size` (short side truncated, at least 1)."""
    h, w = image.shape[:2]
    if h > w:
        new_h, new_w = long_size, int(1.0 * long_size * w / h)
    else:
        new_h, new_w = int(1.0 * long_size * h / w), long_size
    return cv2.resize(image, (max(new_w, 1), max(new_h, 1)))


def preprocess_image(image_bgr: np.ndarray, crop_size: int) -> Tuple[np.ndarray, int, int]:
    """(3, crop, crop) float32 RGB-normalised, zero-padded input plus the resized height and width."""
    resized = resize_long_side(image_bgr, crop_size)
    h, w = resized.shape[:2]
    normalised = (resized - np.asarray(BGR_MEAN)) / np.asarray(BGR_STD)
    chw = np.zeros((3, crop_size, crop_size), dtype=np.float32)
    chw[:, :h, :w] = normalised[:, :, ::-1].transpose(2, 0, 1)
    return chw, h, w


def _logits_batch(predict_logits: PredictLogits, batch: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.asarray(predict_logits(batch))
    expected = (batch.shape[0], num_classes, batch.shape[2], batch.shape[3])
    if out.shape != expected:
        raise ValueError(f"predict_logits returned shape {out.shape}, expected {expected}")
    return out.astype(np.float32, copy=False)


def _predict_scale(predict_logits: PredictLogits, images: Sequence[np.ndarray], batch_size: int,
                   crop_size: int, flip: bool, num_classes: int) -> List[np.ndarray]:
    """Per image (H, W, C) logits at the original size for one input size."""
    batch = np.zeros((batch_size, 3, crop_size, crop_size), dtype=np.float32)
    regions = []
    for slot, image in enumerate(images):
        batch[slot], h, w = preprocess_image(image, crop_size)
        regions.append((h, w))
    logits = _logits_batch(predict_logits, batch, num_classes)
    if flip:
        flipped = _logits_batch(predict_logits, np.ascontiguousarray(batch[:, :, :, ::-1]), num_classes)
        logits = logits + flipped[:, :, :, ::-1]
    outputs = []
    for slot, image in enumerate(images):
        h, w = regions[slot]
        probs = np.ascontiguousarray(logits[slot, :, :h, :w].transpose(1, 2, 0))
        probs = cv2.resize(probs, (image.shape[1], image.shape[0]))
        outputs.append(probs.reshape(image.shape[0], image.shape[1], num_classes))
    return outputs


def _read_pair(image_path: str, label_path: str) -> Tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(image_path, "cannot read image (missing or not a valid image file)")
    label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise DataError(label_path, "cannot read label (missing or not a valid image file)")
    if label.shape != image.shape[:2]:
        raise DataError(label_path, f"label size {label.shape[1]}x{label.shape[0]} differs from image "
                                    f"size {image.shape[1]}x{image.shape[0]} of {image_path}")
    return image, label


def _check_label_values(label: np.ndarray, path: str, num_classes: int, ignore_label: int) -> None:
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise DataError(path, f"label values {bad[:8].tolist()} are neither classes 0..{num_classes - 1} nor "
                              f"the ignore label {ignore_label} (a palette PNG instead of a gray one?)")


def evaluate(predict_logits: PredictLogits, list_path, *, batch_size: int, crop_size: int,
             scales: Sequence[float] = (1.0,), flip: bool = False, num_classes: int = 21,
             ignore_label: int = IGNORE_LABEL, progress: bool = True) -> EvalResult:
    """Run `predict_logits` over every image of a list file and score it.

    `predict_logits` maps a float32 (batch_size, 3, S, S) array to (batch_size, num_classes, S, S)
    logits; S is the crop size of each scale, and a last short batch is padded with zero images.
    Progress lines (`processed N images`) go to stderr.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if not 0 <= ignore_label < 256:
        raise ValueError(f"ignore_label must be in [0, 256), got {ignore_label}")
    pairs = load_image_list(list_path)
    sizes = scale_crop_sizes(crop_size, scales)
    if progress:
        print(f"evaluating {len(pairs)} images, input sizes {sizes}, flip {flip}",
              file=sys.stderr, flush=True)
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    start = time.monotonic()
    for first in range(0, len(pairs), batch_size):
        chunk = [_read_pair(img, lbl) for img, lbl in pairs[first:first + batch_size]]
        images = [image for image, _ in chunk]
        summed = _predict_scale(predict_logits, images, batch_size, sizes[0], flip, num_classes)
        for size in sizes[1:]:
            for total, extra in zip(summed, _predict_scale(predict_logits, images, batch_size, size,
                                                           flip, num_classes)):
                total += extra
        for (_, label_path), probs, (_, label) in zip(pairs[first:first + batch_size], summed, chunk):
            _check_label_values(label, label_path, num_classes, ignore_label)
            valid_label = np.where(label == ignore_label, num_classes, label)
            hist += metrics.confusion_histogram(valid_label, probs.argmax(axis=2), num_classes)
        if progress:
            done = first + len(chunk)
            print(f"processed {done}/{len(pairs)} images ({time.monotonic() - start:.1f} s)",
                  file=sys.stderr, flush=True)
    iou = metrics.per_class_iou(hist)
    return EvalResult(per_class_iou=tuple(float(v) for v in iou), mean_iou=metrics.mean_iou(hist),
                      hist=hist, images=len(pairs))


def models_by_size(models: Sequence[ExportedModel], crop_size: int, scales: Sequence[float], *,
                   flag: str, file_format: str) -> Dict[int, ExportedModel]:
    """The model for each input size the scales need; `ModelMismatch` when a size has none or two.

    `flag` is the command-line option the models came from and `file_format` theirs, for the messages.
    """
    by_size: Dict[int, ExportedModel] = {}
    for m in models:
        if m.size in by_size:
            raise ModelMismatch(f"{flag}: {by_size[m.size].path} and {m.path} both take {m.size}x{m.size} "
                                "input")
        by_size[m.size] = m
    needed = scale_crop_sizes(crop_size, scales)
    for scale, size in zip(scales, needed):
        if size not in by_size:
            have = ", ".join(f"{m.path} ({m.size}px)" for m in models)
            raise ModelMismatch(f"--scales: scale {scale:g} needs a model with {size}x{size} input, have "
                                f"{have}. An exported model has a fixed input size, so multi-scale "
                                "evaluation needs one model per scale: refinenet-export --format "
                                f"{file_format} --crop-size {size} ... and pass it as a further {flag}")
    return {size: by_size[size] for size in needed}


def check_consistent(models: Sequence[ExportedModel], batch_size: Optional[int], num_classes: Optional[int],
                     *, flag: str, file_format: str) -> Tuple[int, int]:
    """(batch size, class count) agreed by the command line and every model, else `ModelMismatch`."""
    batches = {m.batch for m in models if m.batch is not None}
    if len(batches) > 1:
        raise ModelMismatch(f"{flag}: the models were exported for different batch sizes {sorted(batches)}")
    model_batch = batches.pop() if batches else None
    if batch_size is not None and model_batch is not None and batch_size != model_batch:
        raise ModelMismatch(f"--batch-size {batch_size}: {models[0].path} was exported for batch size "
                            f"{model_batch}; drop --batch-size or re-export with refinenet-export --format "
                            f"{file_format} --batch-size {batch_size}")
    batch = batch_size or model_batch or 1
    if batch < 1:
        raise ModelMismatch(f"--batch-size: must be at least 1, got {batch}")
    classes = {m.num_classes for m in models if m.num_classes is not None}
    if len(classes) > 1:
        raise ModelMismatch(f"{flag}: the models have different class counts {sorted(classes)}")
    model_classes = classes.pop() if classes else None
    if num_classes is not None and model_classes is not None and num_classes != model_classes:
        raise ModelMismatch(f"--num-classes {num_classes}: the model outputs {model_classes} classes")
    classes_final = num_classes or model_classes
    if classes_final is None:
        raise ModelMismatch("--num-classes: the model's output has no fixed class count; give --num-classes")
    return batch, classes_final


def format_result(result: EvalResult, class_names: Optional[Sequence[str]] = None) -> str:
    """The per-class IoU table (when names are given or the classes are VOC's), then the ModelZoo lines
    `per-class IoU [...]` and `mean IoU <float>`."""
    iou = np.asarray(result.per_class_iou)
    names = list(class_names) if class_names is not None else _default_names(len(iou))
    width = max(len(n) for n in names) if names else 0
    lines = [f"{name:<{width}}  {value:.4f}" for name, value in zip(names, iou)]
    lines.append(f"per-class IoU {np.array2string(iou, precision=8, max_line_width=10_000)}")
    lines.append(f"mean IoU {result.mean_iou}")
    return "\n".join(lines)


def report_result(result: EvalResult, output: Optional[str] = None) -> None:
    """Print the result in the seed's format and, with `output`, write it as JSON (atomically)."""
    from refinenet.manifest import write_json_atomic

    print(format_result(result), flush=True)
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, json.loads(result.to_json()))
        print(f"wrote {out}", flush=True)


def arrange_models(models: Sequence[ExportedModel], args, *, flag: str, file_format: str):
    """(model per input size, crop size, batch size, class count) for the command line `args`
    (`crop_size`, `scales`, `batch_size`, `num_classes`); `ModelMismatch` when they do not fit."""
    crop_size = args.crop_size or models[0].size
    by_size = models_by_size(models, crop_size, args.scales, flag=flag, file_format=file_format)
    batch, classes = check_consistent(list(by_size.values()), args.batch_size, args.num_classes, flag=flag,
                                      file_format=file_format)
    return by_size, crop_size, batch, classes


def run_exported_evaluation(by_size: Mapping[int, ExportedModel], args, *, crop_size: int, batch_size: int,
                            num_classes: int, engine: str) -> int:
    """Evaluate exported models, one per input size, as the command line `args` asks (`data_lst`,
    `scales`, `flip`, `ignore_label`, `output`) and report the result.

    `engine` names what runs the models in the `evaluating ...` line. Returns the exit status: 0, or 2
    after printing the `DataError` of an unreadable image or label.
    """
    def predict_logits(x: np.ndarray) -> np.ndarray:
        return by_size[x.shape[2]](x)

    used = [f"{m.path} ({size}px)" for size, m in by_size.items()]
    print(f"evaluating {', '.join(used)} on {args.data_lst} with {engine}", flush=True)
    try:
        result = evaluate(predict_logits, args.data_lst, batch_size=batch_size, crop_size=crop_size,
                          scales=args.scales, flip=args.flip, num_classes=num_classes,
                          ignore_label=args.ignore_label)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    report_result(result, args.output)
    return 0
