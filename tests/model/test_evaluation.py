"""The evaluation loop with an oracle and a constant predictor on small images written to disk."""
import json
import math

import cv2
import numpy as np
import pytest

from refinenet.data.errors import DataError
from refinenet.evaluation import (
    EvalResult,
    evaluate,
    format_result,
    load_image_list,
    preprocess_image,
    scale_crop_sizes,
)
from refinenet.palette import voc_colormap

CROP = 33
NUM_CLASSES = 21
RGB_MEAN = np.array([123.675, 116.28, 103.53])
RGB_STD = np.array([58.395, 57.12, 57.375])
CLASS_RGB = voc_colormap()[:NUM_CLASSES].astype(np.float64)


def _write_pairs(root, shapes, seed=0):
    """Images whose pixel colour is the VOC colour of its class (255 = void stripe); returns the list path."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, (h, w) in enumerate(shapes):
        label = rng.integers(0, 4, size=(h, w), dtype=np.uint8) * 5
        label[: h // 3, : w // 3] = rng.integers(0, NUM_CLASSES)
        label[-1, :] = 255
        rgb = voc_colormap()[label]
        img_path, lbl_path = root / f"img_{i}.png", root / f"lbl_{i}.png"
        cv2.imwrite(str(img_path), rgb[:, :, ::-1])
        cv2.imwrite(str(lbl_path), label)
        lines.append(f"{img_path} {lbl_path}\n")
    list_path = root / "val_lst.txt"
    list_path.write_text("".join(lines))
    return list_path


def _oracle(batch):
    """One-hot logits of the class whose normalised colour is nearest to each input pixel."""
    colours = (CLASS_RGB - RGB_MEAN) / RGB_STD
    dist = ((batch[:, None] - colours[None, :, :, None, None]) ** 2).sum(axis=2)
    best = dist.argmin(axis=1)
    return np.eye(NUM_CLASSES, dtype=np.float32)[best].transpose(0, 3, 1, 2)


def _ground_truth_hist(list_path):
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for _, lbl in load_image_list(list_path):
        label = cv2.imread(lbl, cv2.IMREAD_GRAYSCALE).reshape(-1).astype(np.int64)
        label = label[label < NUM_CLASSES]
        np.add.at(hist, (label, label), 1)
    return hist


@pytest.fixture
def exact_size_list(tmp_path):
    # Long side equal to the crop: the resize is the identity, so the oracle is exact.
    return _write_pairs(tmp_path, [(CROP, 20), (17, CROP), (CROP, CROP), (25, CROP), (CROP, 9)])


@pytest.mark.parametrize("flip", [False, True])
def test_oracle_scores_one(exact_size_list, flip):
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return _oracle(batch)

    result = evaluate(predict, exact_size_list, batch_size=2, crop_size=CROP, flip=flip, progress=False)
    assert result.mean_iou == 1.0
    assert result.images == 5
    assert calls == [(2, 3, CROP, CROP)] * (3 * (2 if flip else 1))
    np.testing.assert_array_equal(result.hist, _ground_truth_hist(exact_size_list))


def test_constant_predictor_expected_value(tmp_path):
    list_path = _write_pairs(tmp_path, [(40, 61), (70, 23), (12, 12)], seed=3)
    labels = [cv2.imread(lbl, cv2.IMREAD_GRAYSCALE) for _, lbl in load_image_list(list_path)]
    valid = np.concatenate([lbl[lbl < NUM_CLASSES] for lbl in labels])
    present = np.unique(valid)
    k = 5

    def predict(batch):
        logits = np.zeros((batch.shape[0], NUM_CLASSES) + batch.shape[2:], dtype=np.float32)
        logits[:, k] = 1.0
        return logits

    result = evaluate(predict, list_path, batch_size=2, crop_size=CROP, scales=(1.0, 0.75, 1.5), flip=True,
                      progress=False)
    expected = {c: (np.sum(valid == k) / valid.size if c == k else 0.0) for c in present}
    for c in range(NUM_CLASSES):
        if c in expected:
            assert result.per_class_iou[c] == pytest.approx(expected[c])
        else:
            assert math.isnan(result.per_class_iou[c])
    assert result.mean_iou == pytest.approx(np.mean(list(expected.values())))
    assert result.hist.sum() == valid.size


def test_scale_sizes_and_preprocessing():
    assert scale_crop_sizes(513, [1.0, 0.5, 1.75]) == [513, 257, 897]
    image = np.full((10, 20, 3), (103, 116, 124), dtype=np.uint8)  # BGR close to the mean
    chw, h, w = preprocess_image(image, 40)
    assert (h, w) == (20, 40)
    assert chw.shape == (3, 40, 40) and chw.dtype == np.float32
    assert np.all(chw[:, 20:, :] == 0)
    assert chw[0, 0, 0] == pytest.approx((124 - 123.675) / 58.395, rel=1e-5)  # channel 0 is red


def test_result_json_and_format(exact_size_list):
    result = evaluate(_oracle, exact_size_list, batch_size=4, crop_size=CROP, progress=False)
    data = json.loads(result.to_json())
    assert data["mean_iou"] == 1.0 and data["images"] == 5
    assert data["class_names"][0] == "background"
    assert len(data["per_class_iou"]) == NUM_CLASSES and None in data["per_class_iou"]
    text = format_result(result)
    assert "per-class IoU [" in text
    assert text.splitlines()[-1] == "mean IoU 1.0"
    assert isinstance(result, EvalResult)


def test_wrong_logits_shape_is_reported(exact_size_list):
    with pytest.raises(ValueError, match="predict_logits returned shape"):
        evaluate(lambda b: b, exact_size_list, batch_size=2, crop_size=CROP, progress=False)


def test_list_errors_name_file_and_line(tmp_path, exact_size_list):
    bad = tmp_path / "bad.txt"
    first = exact_size_list.read_text().splitlines()[0]
    bad.write_text(f"{first}\n\nonly_one_field\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: expected"):
        load_image_list(bad)
    bad.write_text(f"{first}\n{tmp_path}/nope.jpg {tmp_path}/nope.png\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: image file not found"):
        load_image_list(bad)
    with pytest.raises(DataError, match="list file not found"):
        load_image_list(tmp_path / "missing.txt")


def test_palette_label_is_rejected(tmp_path):
    list_path = _write_pairs(tmp_path, [(CROP, 20)])
    _, lbl = load_image_list(list_path)[0]
    cv2.imwrite(lbl, np.full((CROP, 20), 128, dtype=np.uint8))
    with pytest.raises(DataError, match="palette PNG"):
        evaluate(_oracle, list_path, batch_size=1, crop_size=CROP, progress=False)


def test_corrupt_image_is_reported(tmp_path):
    list_path = _write_pairs(tmp_path, [(CROP, 20)])
    img, _ = load_image_list(list_path)[0]
    with open(img, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        evaluate(_oracle, list_path, batch_size=1, crop_size=CROP, progress=False)
