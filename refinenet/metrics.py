"""Segmentation metrics: the confusion histogram hist[gt, pred] and IoU, as the ModelZoo eval has them."""
from __future__ import annotations

import numpy as np


def confusion_histogram(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts of pixels with ground truth row and prediction column.

    Pixels whose ground truth is outside [0, num_classes) (the 255 void label) are not counted.
    Predictions outside [0, num_classes) are a caller bug and raise ValueError.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    valid = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[valid], pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class out of range [0, {num_classes}): {pred.min()}..{pred.max()}")
    counts = np.bincount(num_classes * gt + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(hist: np.ndarray) -> np.ndarray:
    """IoU of each class: diag / (row sum + column sum - diag); NaN for a class absent from gt and pred."""
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    union = hist.sum(axis=1) + hist.sum(axis=0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return diag / union


def mean_iou(hist: np.ndarray) -> float:
    """Mean of the per-class IoUs over the classes that occur (NaNs skipped); NaN for an empty histogram."""
    iou = per_class_iou(hist)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def pixel_accuracy(hist: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly; NaN for an empty histogram."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    return float(np.trace(hist) / total) if total else float("nan")
