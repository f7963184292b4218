"""A small synthetic dataset in the PASCAL VOC 2012 and SBD layouts and file formats.

Each image shows one or two large shapes (rectangles, ellipses, triangles) of distinct VOC classes
on a grey, blotchy background. Every class has its own saturated colour (any two differ by at least
105 in some channel) and stripe texture, so a small network learns all 20 classes in a few hundred
steps. VOC labels are palette PNGs with a void (255) border around each object; SBD labels are
`cls/<id>.mat` files holding the MATLAB struct `GTcls` with a `Segmentation` field. As in the real
sets, some VOC train/val ids are also SBD train/val ids. Contents depend only on the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import scipy.io
from PIL import Image

from refinenet.palette import IGNORE_LABEL, palette_bytes

NUM_CLASSES = 21
VOC_DIR = Path("VOCdevkit") / "VOC2012"
SBD_DIR = Path("benchmark_RELEASE") / "dataset"


@dataclass(frozen=True)
class SynthSplits:
    """Image ids of each split; `voc_*` and `sbd_*` overlap the way the real sets do."""

    voc_train: Tuple[str, ...]
    voc_val: Tuple[str, ...]
    sbd_train: Tuple[str, ...]
    sbd_val: Tuple[str, ...]

    @property
    def voc_ids(self) -> List[str]:
        return sorted(set(self.voc_train) | set(self.voc_val))

    @property
    def sbd_ids(self) -> List[str]:
        return sorted(set(self.sbd_train) | set(self.sbd_val))


def image_id(k: int) -> str:
    """VOC-style ids: 2007_000000, 2007_000001, ..., 2008_000000 after a thousand."""
    return f"{2007 + k // 1000}_{k % 1000:06d}"


def make_splits(num_images: int, rng: np.random.Generator) -> SynthSplits:
    """About 30% VOC train, 20% VOC val, 50% SBD only; a third of each VOC split is also in SBD."""
    if num_images < 6:
        raise ValueError(f"need at least 6 images for all four splits, got {num_images}")
    ids = [image_id(k) for k in rng.permutation(num_images)]
    n_train, n_val = max(1, round(0.3 * num_images)), max(1, round(0.2 * num_images))
    voc_train, voc_val, sbd_only = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    half = len(sbd_only) * 3 // 4
    sbd_train = sbd_only[:half] + voc_train[: max(1, n_train // 3)]
    sbd_val = sbd_only[half:] + voc_val[: max(1, n_val // 3)]
    return SynthSplits(*(tuple(sorted(s)) for s in (voc_train, voc_val, sbd_train, sbd_val)))


def _class_colours() -> np.ndarray:
    """One colour per class, at least 105 apart in some channel: corners and edge midpoints of the RGB
    cube, without its greys (the background is grey) and without the four nearest to mid-grey."""
    levels = (25, 130, 235)
    lattice = [(r, g, b) for r in levels for g in levels for b in levels if len({r, g, b}) > 1]
    near_grey = [(130, 130, 25), (130, 130, 235), (25, 130, 130), (235, 130, 130)]
    objects = [c for c in lattice if c not in near_grey]
    return np.array([(128, 128, 128)] + objects, dtype=np.float32)


def _stripes(h: int, w: int, cls: int) -> np.ndarray:
    """Per-class stripe texture in [-1, 1]: orientation and period depend on the class."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.pi * (cls % 4) / 4
    period = 4 + (cls % 5)
    return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A grey of random brightness with smooth low-contrast blotches, (h, w, 3) float32."""
    level = rng.uniform(95, 165)
    blotches = cv2.resize(rng.normal(0, 1, size=(4, 4)).astype(np.float32), (w, h),
                          interpolation=cv2.INTER_CUBIC)
    return np.repeat((level + 12 * blotches)[:, :, None], 3, axis=2)


def _shape_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    sh, sw = int(rng.uniform(0.35, 0.7) * h), int(rng.uniform(0.35, 0.7) * w)
    y0, x0 = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    kind = rng.integers(0, 3)
    if kind == 0:
        cv2.rectangle(mask, (x0, y0), (x0 + sw - 1, y0 + sh - 1), 1, thickness=-1)
    elif kind == 1:
        cv2.ellipse(mask, (x0 + sw // 2, y0 + sh // 2), (max(sw // 2, 1), max(sh // 2, 1)), 0, 0, 360, 1, -1)
    else:
        pts = np.array([[x0 + sw // 2, y0], [x0, y0 + sh - 1], [x0 + sw - 1, y0 + sh - 1]], dtype=np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def render_sample(rng: np.random.Generator, min_size: int, max_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, class map uint8 without void) of random size with 1-2 objects of distinct classes.

    Objects are large, flat in their class's colour with its stripe texture on top, on a grey
    background, so a small network separates all 20 classes after a few hundred steps.
    """
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    colours = _class_colours()
    label = np.zeros((h, w), dtype=np.uint8)
    count = 1 + int(rng.random() < 0.5)
    for cls in rng.choice(np.arange(1, NUM_CLASSES), size=count, replace=False):
        label[_shape_mask(h, w, rng)] = int(cls)
    image = _background(h, w, rng)
    texture = np.zeros((h, w), dtype=np.float32)
    for cls in np.unique(label):
        if cls:
            inside = label == cls
            image[inside] = colours[cls]
            texture[inside] = _stripes(h, w, int(cls))[inside]
    image = image + 15 * texture[:, :, None] + rng.normal(0, 6, size=(h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[:, :, ::-1].copy(), label


def void_border(label: np.ndarray, width: int = 1) -> np.ndarray:
    """The VOC annotation style: a band of IGNORE_LABEL along every object's outline."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), dtype=np.uint8)
    edges = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    out = label.copy()
    out[edges] = IGNORE_LABEL
    return out


def save_palette_png(path: Path, label: np.ndarray) -> None:
    image = Image.fromarray(label, mode="P")
    image.putpalette(palette_bytes())
    image.save(path)


def save_sbd_mat(path: Path, label: np.ndarray) -> None:
    """`GTcls` as MATLAB writes it: a 1x1 struct with Segmentation (uint8) and CategoriesPresent."""
    present = np.array([c for c in np.unique(label) if c != 0], dtype=np.float64).reshape(-1, 1)
    scipy.io.savemat(str(path), {"GTcls": {"Segmentation": label, "CategoriesPresent": present}},
                     do_compression=True)


def _write_ids(path: Path, ids) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def generate(out, *, num_images: int = 40, seed: int = 0, min_size: int = 48, max_size: int = 96,
             progress=None) -> SynthSplits:
    """Write the dataset under `out` (created; must not already hold a VOCdevkit or benchmark_RELEASE)."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    out = Path(out)
    for sub in (VOC_DIR.parts[0], SBD_DIR.parts[0]):
        if (out / sub).exists():
            raise FileExistsError(f"{out / sub} already exists")
    rng = np.random.default_rng(seed)
    splits = make_splits(num_images, rng)
    voc, sbd = out / VOC_DIR, out / SBD_DIR
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation",
                   sbd / "img", sbd / "cls"):
        folder.mkdir(parents=True, exist_ok=True)
    voc_ids, sbd_ids = set(splits.voc_ids), set(splits.sbd_ids)
    all_ids = sorted(voc_ids | sbd_ids)
    for done, name in enumerate(all_ids, start=1):
        image, label = render_sample(np.random.default_rng([seed, int(name.replace("_", ""))]),
                                     min_size, max_size)
        if name in voc_ids:
            cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            save_palette_png(voc / "SegmentationClass" / f"{name}.png", void_border(label))
        if name in sbd_ids:
            cv2.imwrite(str(sbd / "img" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            save_sbd_mat(sbd / "cls" / f"{name}.mat", label)
        if progress:
            progress(done, len(all_ids))
    _write_ids(voc / "ImageSets" / "Segmentation" / "train.txt", splits.voc_train)
    _write_ids(voc / "ImageSets" / "Segmentation" / "val.txt", splits.voc_val)
    _write_ids(sbd / "train.txt", splits.sbd_train)
    _write_ids(sbd / "val.txt", splits.sbd_val)
    return splits
