"""Confusion histogram and IoU against hand-computed values."""
import math

import numpy as np
import pytest

from refinenet import metrics


def test_histogram_rows_are_ground_truth_columns_predictions():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    hist = metrics.confusion_histogram(gt, pred, 3)
    expected = np.array([[1, 1, 0],
                         [0, 1, 1],
                         [0, 0, 1]])
    np.testing.assert_array_equal(hist, expected)
    assert hist.dtype == np.int64


def test_ignored_and_out_of_range_ground_truth_not_counted():
    gt = np.array([255, 3, -1, 0])
    pred = np.array([0, 0, 0, 0])
    assert metrics.confusion_histogram(gt, pred, 3).sum() == 1


def test_prediction_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="out of range"):
        metrics.confusion_histogram(np.array([0]), np.array([3]), 3)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_histogram(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_iou_hand_computed():
    hist = np.array([[3, 1, 0],
                     [2, 4, 0],
                     [0, 0, 0]])
    iou = metrics.per_class_iou(hist)
    # class 0: 3 / (4 + 5 - 3); class 1: 4 / (6 + 5 - 4); class 2 never occurs.
    assert iou[0] == pytest.approx(3 / 6)
    assert iou[1] == pytest.approx(4 / 7)
    assert math.isnan(iou[2])
    assert metrics.mean_iou(hist) == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert metrics.pixel_accuracy(hist) == pytest.approx(7 / 10)


def test_class_predicted_but_absent_from_ground_truth_has_zero_iou():
    hist = np.array([[2, 2],
                     [0, 0]])
    iou = metrics.per_class_iou(hist)
    assert iou.tolist() == [0.5, 0.0]
    assert metrics.mean_iou(hist) == pytest.approx(0.25)


def test_empty_histogram_gives_nan_without_warning():
    hist = np.zeros((3, 3), dtype=np.int64)
    with np.errstate(all="raise"):
        assert math.isnan(metrics.mean_iou(hist))
        assert math.isnan(metrics.pixel_accuracy(hist))


def test_histograms_add_up_over_images():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    preds = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    summed = sum(metrics.confusion_histogram(g, p, 4) for g, p in zip(gts, preds))
    joint = metrics.confusion_histogram(np.stack(gts), np.stack(preds), 4)
    np.testing.assert_array_equal(summed, joint)
