"""Training input pipeline (ModelZoo `get_dataset1` transforms) with epoch batches that resume exactly.

The batches of epoch e on rank r are a function of (seed, e, r, group_size) only: the sample
order is a permutation seeded by (seed, e), rank r takes every group_size-th sample of it, and each
sample's augmentation draws from an RNG seeded by (seed, e, sample index). Worker count, and
whether earlier epochs ran in this process, change nothing.

A dataset built with `epoch=e` yields epoch e on its first pass, e+1 on the next, and so on — the
shape of `Model.train(epochs, dataset, initial_epoch=e)`. With `skip_batches=k` its first pass
starts at batch k of epoch e: a run resumed from a mid-epoch checkpoint sees exactly the batches the
uninterrupted run would have; the skipped samples are neither read nor decoded (a placeholder row
each, dropped by a filter before decoding, since MindSpore wants every pass as long as `len()`).
MindSpore's schema probes (output shapes/types) run a pass of their own; they are made here, once,
before the epoch count starts.

Evaluation preprocessing lives in `refinenet.evaluation` (`preprocess_image`), which needs no MindSpore.
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple

import cv2
import numpy as np

from refinenet.data.errors import DataError
from refinenet.data.sources import open_source
from refinenet.evaluation import preprocess_image as eval_transform
from refinenet.palette import IGNORE_LABEL

__all__ = ["RGB_MEAN", "RGB_STD", "build_train_dataset", "dataset_size", "epoch_indices", "eval_transform",
           "sample_rng", "train_transform"]

RGB_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
RGB_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

_PERMUTATION_STREAM = 0
_SAMPLE_STREAM = 1


def steps_per_epoch(num_samples: int, batch_size: int, group_size: int) -> int:
    """Full global batches in an epoch (the remainder is dropped)."""
    return num_samples // (batch_size * group_size)


def epoch_indices(num_samples: int, *, seed: int, epoch: int, rank: int, group_size: int,
                  batch_size: int) -> np.ndarray:
    """Dataset indices rank `rank` trains on in epoch `epoch`, in order (a whole number of batches)."""
    order = np.random.default_rng([seed, epoch, _PERMUTATION_STREAM]).permutation(num_samples)
    per_rank = steps_per_epoch(num_samples, batch_size, group_size) * batch_size
    return order[rank::group_size][:per_rank]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample in one epoch."""
    return np.random.default_rng([seed, epoch, _SAMPLE_STREAM, index])


def train_transform(image_rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, crop_size: int,
                    min_scale: float, max_scale: float, ignore_label: int = IGNORE_LABEL
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Random scale (cubic image, nearest label), normalise, pad to >= crop (0 / ignore), random crop,
    horizontal flip with p=0.5; returns float32 (3, crop, crop) and int32 (crop, crop)."""
    scale = rng.uniform(min_scale, max_scale)
    h, w = label.shape
    new_h, new_w = max(int(scale * h), 1), max(int(scale * w), 1)
    image = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    image = (image.astype(np.float32) - RGB_MEAN) / RGB_STD
    pad_h, pad_w = max(crop_size - new_h, 0), max(crop_size - new_w, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0.0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_label)
    top = int(rng.integers(0, image.shape[0] - crop_size + 1))
    left = int(rng.integers(0, image.shape[1] - crop_size + 1))
    image = image[top:top + crop_size, left:left + crop_size]
    label = label[top:top + crop_size, left:left + crop_size]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1)), label.astype(np.int32)


def decode_pair(image_bytes: np.ndarray, label_bytes: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and gray uint8 label from encoded bytes; DataError naming the sample otherwise."""
    image = cv2.imdecode(np.frombuffer(image_bytes, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(name, "cannot decode image")
    label = cv2.imdecode(np.frombuffer(label_bytes, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise DataError(name, "cannot decode label")
    if label.shape != image.shape[:2]:
        raise DataError(name, f"label size {label.shape[::-1]} differs from image size {image.shape[1::-1]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), label


_SKIPPED = np.zeros(1, dtype=np.uint8)


def _not_skipped(key: np.ndarray) -> bool:
    """Filter predicate: False for the placeholder rows of samples a mid-epoch start leaves out."""
    return bool(key[1] >= 0)


class _EpochSamples:
    """GeneratorDataset source: each pass is the next epoch; rows are (image bytes, label bytes, key)."""

    def __init__(self, source, *, seed, first_epoch, rank, group_size, batch_size):
        self.source = source
        self.seed, self.rank, self.group_size, self.batch_size = seed, rank, group_size, batch_size
        self.next_epoch = first_epoch
        self.skip_next = 0  # samples of the next pass's epoch to leave out, from its start
        self.length = steps_per_epoch(len(source), batch_size, group_size) * batch_size

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        skip, self.skip_next = self.skip_next, 0
        indices = epoch_indices(len(self.source), seed=self.seed, epoch=epoch, rank=self.rank,
                                group_size=self.group_size, batch_size=self.batch_size)
        for slot, index in enumerate(indices):
            if slot < skip:
                yield _SKIPPED, _SKIPPED, np.array([epoch, -1], dtype=np.int64)
                continue
            image_bytes, label_bytes = self.source.read(int(index))
            yield (np.frombuffer(image_bytes, dtype=np.uint8), np.frombuffer(label_bytes, dtype=np.uint8),
                   np.array([epoch, index], dtype=np.int64))


class _Augment:
    """Map operation: decode and augment one row with the RNG its key selects (picklable for workers)."""

    def __init__(self, names: Sequence[str], *, seed, crop_size, min_scale, max_scale, ignore_label):
        self.names = list(names)
        self.seed, self.crop_size = seed, crop_size
        self.min_scale, self.max_scale, self.ignore_label = min_scale, max_scale, ignore_label

    def __call__(self, image_bytes, label_bytes, key):
        epoch, index = int(key[0]), int(key[1])
        image, label = decode_pair(image_bytes, label_bytes, self.names[index])
        return train_transform(image, label, sample_rng(self.seed, epoch, index), crop_size=self.crop_size,
                               min_scale=self.min_scale, max_scale=self.max_scale,
                               ignore_label=self.ignore_label)


def _check_args(*, batch_size, crop_size, rank, group_size, epoch, seed, min_scale, max_scale, ignore_label,
                workers):
    checks = [
        (batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"),
        (crop_size >= 1, f"crop_size must be >= 1, got {crop_size}"),
        (group_size >= 1, f"group_size must be >= 1, got {group_size}"),
        (0 <= rank < group_size, f"rank must be in [0, group_size={group_size}), got {rank}"),
        (epoch >= 0, f"epoch must be >= 0, got {epoch}"),
        (seed >= 0, f"seed must be >= 0, got {seed}"),
        (0 < min_scale <= max_scale, f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}"),
        (0 <= ignore_label < 256, f"ignore_label must be in [0, 256), got {ignore_label}"),
        (workers >= 1, f"workers must be >= 1, got {workers}"),
    ]
    for ok, problem in checks:
        if not ok:
            raise ValueError(problem)


def _check_size(source, batch_size: int, group_size: int) -> int:
    steps = steps_per_epoch(len(source), batch_size, group_size)
    if steps == 0:
        raise DataError(source.path, f"{len(source)} samples are fewer than one global batch "
                                     f"({batch_size} per rank x {group_size} ranks)")
    return steps


def dataset_size(source, batch_size: int, group_size: int = 1) -> int:
    """Steps per epoch of `source` (a list file or MindRecord path) without building the pipeline."""
    return _check_size(open_source(source), batch_size, group_size)


def build_train_dataset(source, *, batch_size: int, crop_size: int, rank: int = 0, group_size: int = 1,
                        epoch: int = 0, seed: int = 1000, min_scale: float = 0.5, max_scale: float = 3.0,
                        ignore_label: int = IGNORE_LABEL, workers: int = 2, skip_batches: int = 0):
    """A `mindspore.dataset` of ("data" float32 (N,3,crop,crop), "label" int32 (N,crop,crop)) batches.

    `source` is a list file ("image label" lines) or a MindRecord file with the ModelZoo schema.
    Its first pass is epoch `epoch` from its batch `skip_batches` on; see the module docstring for
    what fixes the batches. `workers` (decode/augment processes) is capped at the CPU count; it does
    not change the batches.
    """
    import mindspore.dataset as ds

    _check_args(batch_size=batch_size, crop_size=crop_size, rank=rank, group_size=group_size, epoch=epoch,
                seed=seed, min_scale=min_scale, max_scale=max_scale, ignore_label=ignore_label,
                workers=workers)
    samples = open_source(source)
    steps = _check_size(samples, batch_size, group_size)
    if not 0 <= skip_batches < steps:
        raise ValueError(f"skip_batches must be in [0, {steps}) (steps per epoch), got {skip_batches}")
    names = [samples.name(i) for i in range(len(samples))]
    epochs = _EpochSamples(samples, seed=seed, first_epoch=epoch, rank=rank, group_size=group_size,
                           batch_size=batch_size)
    augment = _Augment(names, seed=seed, crop_size=crop_size, min_scale=min_scale, max_scale=max_scale,
                       ignore_label=ignore_label)
    workers = min(workers, os.cpu_count() or 1)
    dataset = ds.GeneratorDataset(epochs, column_names=["image", "label_bytes", "key"], shuffle=False,
                                  num_parallel_workers=1)
    if skip_batches:
        dataset = dataset.filter(_not_skipped, input_columns=["key"], num_parallel_workers=1)
    dataset = dataset.map(augment, input_columns=["image", "label_bytes", "key"],
                          output_columns=["data", "label"], num_parallel_workers=workers,
                          python_multiprocessing=workers > 1)
    dataset = dataset.project(["data", "label"])
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset.output_shapes()
    dataset.output_types()
    epochs.next_epoch = epoch
    epochs.skip_next = skip_batches * batch_size
    return dataset
