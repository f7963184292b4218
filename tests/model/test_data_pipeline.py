"""Training pipeline: synth -> lists -> MindRecord -> batches; determinism per (seed, epoch); sharding."""
import cv2
import numpy as np
import pytest

from refinenet.data import synth
from refinenet.data.errors import DataError
from refinenet.data.lists import build_lists
from refinenet.data.mindrecord import write_mindrecord
from refinenet.data.pipeline import (
    RGB_MEAN,
    RGB_STD,
    build_train_dataset,
    dataset_size,
    decode_pair,
    epoch_indices,
    sample_rng,
    train_transform,
)
from refinenet.data.sources import open_source

CROP = 33


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline") / "data"
    synth.generate(root, num_images=24, seed=11)
    lists = build_lists(root)
    write_mindrecord(None, lists.sbd_train, root / "sbdonly", shards=2)
    return {"list": str(lists.sbd_train), "mindrecord": str(root / "sbdonly0")}


def _epochs(dataset, n):
    it = dataset.create_tuple_iterator(num_epochs=n, output_numpy=True)
    return [[(d.copy(), lbl.copy()) for d, lbl in it] for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["list", "mindrecord"])
def test_batches_have_the_training_layout(sources, kind):
    dataset = build_train_dataset(sources[kind], batch_size=3, crop_size=CROP, workers=2)
    steps = dataset_size(sources[kind], 3)
    assert dataset.get_dataset_size() == steps == len(open_source(sources[kind])) // 3
    assert dataset.get_col_names() == ["data", "label"]
    (batches,) = _epochs(dataset, 1)
    assert len(batches) == steps
    for data, label in batches:
        assert data.shape == (3, 3, CROP, CROP) and data.dtype == np.float32
        assert label.shape == (3, CROP, CROP) and label.dtype == np.int32
        assert set(np.unique(label)) <= set(range(21)) | {255}
        assert np.isfinite(data).all() and np.abs(data).max() < 5


def test_epoch_batches_depend_only_on_seed_and_epoch(sources):
    src = sources["mindrecord"]
    from_zero = _epochs(build_train_dataset(src, batch_size=2, crop_size=CROP, epoch=0, workers=1), 2)
    resumed = _epochs(build_train_dataset(src, batch_size=2, crop_size=CROP, epoch=1, workers=2), 1)
    assert _same(from_zero[1], resumed[0])
    assert not _same(from_zero[0], from_zero[1])
    other_seed = _epochs(build_train_dataset(src, batch_size=2, crop_size=CROP, epoch=1, seed=7), 1)
    assert not _same(resumed[0], other_seed[0])


def test_a_mid_epoch_start_skips_batches_without_reading_them(sources, monkeypatch):
    """skip_batches=k: the first pass is batches k.. of its epoch, later passes are whole epochs, and the
    skipped samples are never read (so never decoded)."""
    import refinenet.data.pipeline as pipeline

    src = sources["list"]
    steps = dataset_size(src, 2)
    reads = []

    class Counting(type(open_source(src))):
        def read(self, index):
            reads.append(index)
            return super().read(index)

    from_zero = _epochs(build_train_dataset(src, batch_size=2, crop_size=CROP, epoch=0, workers=1), 3)
    monkeypatch.setattr(pipeline, "open_source", Counting)
    dataset = build_train_dataset(src, batch_size=2, crop_size=CROP, epoch=1, skip_batches=3, workers=2)
    reads.clear()
    resumed = _epochs(dataset, 2)
    assert len(resumed[0]) == steps - 3 and _same(from_zero[1][3:], resumed[0])
    assert _same(from_zero[2], resumed[1])
    assert len(reads) == (2 * steps - 3) * 2
    skipped = epoch_indices(len(open_source(src)), seed=1000, epoch=1, rank=0, group_size=1, batch_size=2)[:6]
    assert not set(skipped) & set(reads[:(steps - 3) * 2])
    for bad in (-1, steps):
        with pytest.raises(ValueError, match="skip_batches"):
            build_train_dataset(src, batch_size=2, crop_size=CROP, skip_batches=bad)


def test_ranks_get_disjoint_samples_and_the_documented_ones(sources):
    src = sources["list"]
    n = len(open_source(src))
    shards = [epoch_indices(n, seed=1000, epoch=3, rank=r, group_size=2, batch_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == (n // 4) * 2
    assert not set(shards[0]) & set(shards[1])
    assert dataset_size(src, 2, group_size=2) == n // 4

    (batches,) = _epochs(build_train_dataset(src, batch_size=2, crop_size=CROP, rank=1, group_size=2,
                                             epoch=3, workers=2), 1)
    samples = open_source(src)
    got = np.concatenate([d for d, _ in batches])
    for slot, index in enumerate(shards[1]):
        image, label = decode_pair(*samples.read(int(index)), samples.name(int(index)))
        data, _ = train_transform(image, label, sample_rng(1000, 3, int(index)), crop_size=CROP,
                                  min_scale=0.5, max_scale=3.0)
        np.testing.assert_array_equal(got[slot], data)


def test_dataset_smaller_than_global_batch_is_refused(sources):
    n = len(open_source(sources["list"]))
    with pytest.raises(DataError, match="fewer than one global batch"):
        dataset_size(sources["list"], n, group_size=2)
    with pytest.raises(DataError, match="fewer than one global batch"):
        build_train_dataset(sources["mindrecord"], batch_size=n + 1, crop_size=CROP)
    with pytest.raises(ValueError, match="rank"):
        build_train_dataset(sources["list"], batch_size=1, crop_size=CROP, rank=2, group_size=2)


def test_train_transform_pads_normalises_and_flips():
    image = np.full((10, 14, 3), (123, 116, 104), dtype=np.uint8)
    image[:, :7] = (200, 10, 10)
    label = np.zeros((10, 14), dtype=np.uint8)
    label[:, :7] = 3
    data, out = train_transform(image, label, np.random.default_rng(0), crop_size=CROP, min_scale=1.0,
                                max_scale=1.0)
    assert data.shape == (3, CROP, CROP) and out.shape == (CROP, CROP)
    assert (out == 255).sum() == CROP * CROP - 140
    assert np.all(data[:, out == 255] == 0)
    red = data[:, out == 3]
    np.testing.assert_allclose(red[:, 0], (np.array([200, 10, 10]) - RGB_MEAN) / RGB_STD, rtol=1e-6)
    flips = set()
    for seed in range(16):
        _, lbl = train_transform(image, label, np.random.default_rng(seed), crop_size=CROP, min_scale=1.0,
                                 max_scale=1.0)
        cols = np.nonzero((lbl == 3).any(axis=0))[0]
        flips.add(bool(cols.size and cols[0] > 0 and (lbl[:, : cols[0]] != 255).any()))
    assert flips == {False, True}


def test_decode_errors_name_the_sample():
    ok = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1]
    with pytest.raises(DataError, match="a.jpg: cannot decode image"):
        decode_pair(np.frombuffer(b"junk", np.uint8), ok, "a.jpg")


def test_a_data_error_survives_the_trip_from_a_pipeline_worker():
    """Raised in a worker process, pickled to the main one: the same error, naming the same sample."""
    import pickle

    error = pickle.loads(pickle.dumps(DataError("a.jpg", "cannot decode image", line=3)))
    assert (type(error), str(error), error.path, error.problem, error.line) == (
        DataError, "a.jpg:3: cannot decode image", "a.jpg", "cannot decode image", 3)
    rebuilt = type(error)(str(error))  # how MindSpore's pipeline re-raises a worker's error
    assert (type(rebuilt), str(rebuilt)) == (DataError, "a.jpg:3: cannot decode image")
