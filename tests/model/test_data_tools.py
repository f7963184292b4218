"""refinenet-data synth / lists / mindrecord on a small synthetic dataset, including bad inputs."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from refinenet.data import synth
from refinenet.data.cli import main
from refinenet.data.listfile import load_image_list
from refinenet.data.lists import read_sbd_mat

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VOC = synth.VOC_DIR
SBD = synth.SBD_DIR


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    assert main(["synth", "--out", str(root), "--images", "16", "--seed", "7"]) == 0
    return root


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_synth_layout_formats_and_overlap(data_root):
    splits = synth.make_splits(16, np.random.default_rng(7))
    voc_ids = set(splits.voc_ids)
    assert set(splits.sbd_train) & set(splits.voc_train) and set(splits.sbd_val) & set(splits.voc_val)
    split_file = data_root / VOC / "ImageSets/Segmentation/train.txt"
    assert split_file.read_text().split() == list(splits.voc_train)
    for name in voc_ids:
        with Image.open(data_root / VOC / "SegmentationClass" / f"{name}.png") as png:
            assert png.mode == "P"
            label = np.array(png)
        image = cv2.imread(str(data_root / VOC / "JPEGImages" / f"{name}.jpg"))
        assert image.shape[:2] == label.shape and 48 <= min(label.shape) and max(label.shape) <= 96
        assert set(np.unique(label)) <= set(range(21)) | {255} and 255 in label
    for name in splits.sbd_ids:
        label = read_sbd_mat(data_root / SBD / "cls" / f"{name}.mat")
        assert label.max() <= 20 and label.max() > 0
        assert cv2.imread(str(data_root / SBD / "img" / f"{name}.jpg")).shape[:2] == label.shape


def test_synth_is_deterministic_per_seed(tmp_path):
    roots = []
    for i, seed in enumerate((5, 5, 6)):
        roots.append(tmp_path / str(i))
        synth.generate(roots[-1], num_images=8, seed=seed)
    a, b, c = (sorted((r / VOC / "JPEGImages").iterdir()) for r in roots)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    mats = [sorted((r / SBD / "cls").glob("*.mat")) for r in roots[:2]]
    for x, y in zip(*mats):
        np.testing.assert_array_equal(read_sbd_mat(x), read_sbd_mat(y))


def test_synth_classes_are_separable_by_colour():
    colours = synth._class_colours()
    gaps = np.abs(colours[:, None] - colours[None, :]).max(axis=2) + 1000 * np.eye(len(colours))
    assert colours.shape == (21, 3) and gaps.min() >= 100
    for k in range(20):
        image, label = synth.render_sample(np.random.default_rng([0, k]), 48, 72)
        classes = [c for c in np.unique(label) if c]
        assert 1 <= len(classes) <= 2 and label.shape == image.shape[:2]
        for c in classes:
            mean_rgb = image[label == c][:, ::-1].mean(axis=0)
            assert np.abs(mean_rgb - colours[c]).max() < 15


def test_lists_convert_labels_and_exclude_voc_from_sbd(data_root):
    assert main(["lists", "--data-root", str(data_root)]) == 0
    voc_train = (data_root / VOC / "ImageSets/Segmentation/train.txt").read_text().split()
    voc_val = (data_root / VOC / "ImageSets/Segmentation/val.txt").read_text().split()
    sbd_all = ((data_root / SBD / "train.txt").read_text().split()
               + (data_root / SBD / "val.txt").read_text().split())
    pairs = load_image_list(data_root / "voc_train_lst.txt")
    images = data_root.resolve() / VOC / "JPEGImages"
    assert [p[0] for p in pairs] == [str(images / f"{i}.jpg") for i in voc_train]
    assert len(load_image_list(data_root / "voc_val_lst.txt")) == len(voc_val)
    sbd_ids = [p[1].rsplit("/", 1)[1][:-4] for p in load_image_list(data_root / "sbd_train_lst.txt")]
    assert sbd_ids == [i for i in sbd_all if i not in set(voc_train) | set(voc_val)]
    for _, label_path in pairs:
        gray = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
        with Image.open(label_path.replace("SegmentationClassGray", "SegmentationClass")) as png:
            np.testing.assert_array_equal(gray, np.array(png))
    name = sbd_ids[0]
    mat = read_sbd_mat(data_root / SBD / "cls" / f"{name}.mat")
    np.testing.assert_array_equal(cv2.imread(str(data_root / SBD / "cls_png_gray" / f"{name}.png"), 0), mat)
    with Image.open(data_root / SBD / "cls_png" / f"{name}.png") as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.array(png), mat)


def test_lists_missing_folder_exit_2_writes_nothing(data_root, capsys):
    import shutil
    shutil.rmtree(data_root / SBD / "img")
    before = _snapshot(data_root)
    assert main(["lists", "--data-root", str(data_root)]) == 2
    assert "img: folder not found" in capsys.readouterr().err
    assert _snapshot(data_root) == before


def test_lists_malformed_mat_exit_2_writes_nothing(data_root, capsys):
    bad = sorted((data_root / SBD / "cls").glob("*.mat"))[-1]
    bad.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    before = _snapshot(data_root)
    assert main(["lists", "--data-root", str(data_root)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert _snapshot(data_root) == before


def test_mindrecord_round_trip_and_overwrite(data_root, capsys):
    assert main(["lists", "--data-root", str(data_root)]) == 0
    lst = data_root / "sbd_train_lst.txt"
    out = data_root / "sbdonly"
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "2"]) == 0
    import mindspore.dataset as ds
    rows = list(ds.MindDataset(str(out) + "0", shuffle=False).create_dict_iterator(output_numpy=True))
    pairs = load_image_list(lst)
    assert len(rows) == len(pairs)
    by_name = {str(r["file_name"]): r for r in rows}
    for image_path, label_path in pairs:
        row = by_name[image_path.rsplit("/", 1)[1]]
        assert row["data"].tobytes() == open(image_path, "rb").read()
        assert row["label"].tobytes() == open(label_path, "rb").read()

    stamp = [(p, p.stat().st_mtime_ns) for p in sorted(data_root.glob("sbdonly*"))]
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [(p, p.stat().st_mtime_ns) for p in sorted(data_root.glob("sbdonly*"))] == stamp
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in data_root.glob("sbdonly*")) == ["sbdonly", "sbdonly.db"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_mindrecord_corrupt_jpeg_exit_2_writes_nothing(data_root, capsys, damage):
    assert main(["lists", "--data-root", str(data_root)]) == 0
    lst = data_root / "voc_val_lst.txt"
    bad = load_image_list(lst)[-1][0]
    raw = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(raw[: len(raw) // 2] if damage == "truncate" else b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["mindrecord", "--list", str(lst), "--out", str(data_root / "voconly"), "--shards", "2"]) == 2
    assert bad in capsys.readouterr().err
    assert not list(data_root.glob("voconly*"))


def test_console_entry_point_runs_as_module(tmp_path):
    argv = [sys.executable, "-m", "refinenet.data", "lists", "--data-root", str(tmp_path / "x")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "folder not found" in proc.stderr


def test_mindrecord_creates_a_missing_output_folder(data_root, capsys):
    assert main(["lists", "--data-root", str(data_root)]) == 0
    lst = data_root / "voc_val_lst.txt"
    out = data_root / "records" / "val" / "voconly"
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "2"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["voconly0", "voconly0.db", "voconly1",
                                                            "voconly1.db"]
    import mindspore.dataset as ds
    assert ds.MindDataset(str(out) + "0", shuffle=False).get_dataset_size() == len(load_image_list(lst))
    assert "wrote" in capsys.readouterr().out


def test_mindrecord_output_folder_bad_input_creates_nothing(data_root, capsys, monkeypatch):
    assert main(["lists", "--data-root", str(data_root)]) == 0
    lst = data_root / "voc_val_lst.txt"
    (data_root / "afile").write_text("")
    assert main(["mindrecord", "--list", str(lst), "--out", str(data_root / "afile" / "sub" / "x")]) == 2
    assert "afile: is not a folder" in capsys.readouterr().err

    from refinenet.data import mindrecord
    monkeypatch.setattr(mindrecord, "count_rows", lambda first_file: 0)
    out = data_root / "new" / "sub" / "x"
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "1"]) == 2
    assert "read back 0" in capsys.readouterr().err
    assert not (data_root / "new").exists()

    bad = load_image_list(lst)[0][0]
    open(bad, "wb").write(b"not a jpeg")
    assert main(["mindrecord", "--list", str(lst), "--out", str(out), "--shards", "1"]) == 2
    assert bad in capsys.readouterr().err
    assert not (data_root / "new").exists()
