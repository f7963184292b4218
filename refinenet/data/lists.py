"""VOC/SBD label conversion and the ModelZoo list files (`get_dataset_lst.py` semantics).

Under DATA_ROOT: VOC palette PNGs -> gray PNGs (`SegmentationClassGray`), SBD `cls/*.mat` -> gray
(`cls_png_gray`) and palette (`cls_png`) PNGs, and three lists — `voc_train_lst.txt`,
`voc_val_lst.txt`, and `sbd_train_lst.txt` (SBD train + val minus every VOC train/val id).
Outputs are built in temporary folders and moved into place only when every input was read, so a
bad input leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError

from refinenet.data.errors import DataError
from refinenet.data.synth import SBD_DIR, VOC_DIR
from refinenet.palette import palette_bytes

ProgressFn = Optional[Callable[[str], Callable[[int, int], None]]]

LIST_NAMES = ("voc_train_lst.txt", "voc_val_lst.txt", "sbd_train_lst.txt")


@dataclass(frozen=True)
class ListsResult:
    """Paths of the written lists and their line counts."""

    voc_train: Path
    voc_val: Path
    sbd_train: Path
    counts: Dict[str, int]


def read_ids(path: Path) -> List[str]:
    """Ids of an ImageSets-style split file, one per line, blank lines skipped."""
    if not path.is_file():
        raise DataError(path, "split file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_palette_label(path: Path) -> np.ndarray:
    """Class indices of a VOC palette PNG (a gray `L` PNG is taken as indices too)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(path, f"expected a palette (P) PNG, got mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(path, f"cannot read label image: {exc}") from exc


def read_sbd_mat(path: Path) -> np.ndarray:
    """`GTcls.Segmentation` of an SBD .mat file as uint8 class indices."""
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, MatReadError...
        raise DataError(path, f"cannot read .mat file: {exc}") from exc
    gtcls = mat.get("GTcls")
    segmentation = getattr(gtcls, "Segmentation", None)
    if segmentation is None:
        raise DataError(path, "no GTcls.Segmentation in .mat file")
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or segmentation.size == 0 or segmentation.dtype.kind not in "uif":
        raise DataError(path, f"GTcls.Segmentation is not a 2-D numeric array "
                              f"(shape {segmentation.shape}, dtype {segmentation.dtype})")
    if segmentation.min() < 0 or segmentation.max() > 255 or np.any(segmentation != np.round(segmentation)):
        raise DataError(path, "GTcls.Segmentation holds values that are not integers in 0..255")
    return segmentation.astype(np.uint8)


def _save_gray(path: Path, label: np.ndarray) -> None:
    Image.fromarray(label, mode="L").save(path)


def _save_palette(path: Path, label: np.ndarray) -> None:
    image = Image.fromarray(label, mode="P")
    image.putpalette(palette_bytes())
    image.save(path)


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(path, "folder not found")
    return path


def _partial(path: Path) -> Path:
    partial = path.with_name(f".{path.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _replace_dir(partial: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _list_line(root: Path, image: Path, label: Path) -> str:
    return f"{root / image} {root / label}\n"


def _check_listed(ids: List[str], folder: Path, suffix: str, split: Path) -> None:
    for name in ids:
        if not (folder / f"{name}{suffix}").is_file():
            raise DataError(folder / f"{name}{suffix}", f"listed in {split} but not found")


def build_lists(data_root, *, progress: ProgressFn = None) -> ListsResult:
    """Convert labels and write the three list files into `data_root` (see the module docstring)."""
    root = Path(data_root).resolve()
    _require_dir(root)
    voc, sbd = root / VOC_DIR, root / SBD_DIR
    voc_labels = _require_dir(voc / "SegmentationClass")
    voc_images = _require_dir(voc / "JPEGImages")
    sbd_mats = _require_dir(sbd / "cls")
    sbd_images = _require_dir(sbd / "img")
    splits = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_ids(splits / "train.txt"), read_ids(splits / "val.txt")
    sbd_train, sbd_val = read_ids(sbd / "train.txt"), read_ids(sbd / "val.txt")

    voc_pngs = sorted(voc_labels.glob("*.png"))
    present = {p.stem for p in voc_pngs}
    for split_file, ids in ((splits / "train.txt", voc_train), (splits / "val.txt", voc_val)):
        missing = [i for i in ids if i not in present]
        if missing:
            raise DataError(voc_labels / f"{missing[0]}.png", f"listed in {split_file} but not found")
        _check_listed(ids, voc_images, ".jpg", split_file)
    voc_ids = set(voc_train) | set(voc_val)
    sbd_kept = [i for i in sbd_train + sbd_val if i not in voc_ids]
    _check_listed(sbd_train, sbd_mats, ".mat", sbd / "train.txt")
    _check_listed(sbd_val, sbd_mats, ".mat", sbd / "val.txt")
    _check_listed(sbd_kept, sbd_images, ".jpg", sbd / "train.txt")

    gray_dir, sbd_gray_dir, sbd_png_dir = (voc / "SegmentationClassGray", sbd / "cls_png_gray",
                                           sbd / "cls_png")
    partials = {final: _partial(final) for final in (gray_dir, sbd_gray_dir, sbd_png_dir)}
    try:
        tick = progress("VOC labels") if progress else None
        for done, png in enumerate(voc_pngs, start=1):
            _save_gray(partials[gray_dir] / png.name, read_palette_label(png))
            if tick:
                tick(done, len(voc_pngs))
        mats = sorted(sbd_mats.glob("*.mat"))
        tick = progress("SBD labels") if progress else None
        for done, mat in enumerate(mats, start=1):
            label = read_sbd_mat(mat)
            _save_gray(partials[sbd_gray_dir] / f"{mat.stem}.png", label)
            _save_palette(partials[sbd_png_dir] / f"{mat.stem}.png", label)
            if tick:
                tick(done, len(mats))
    except BaseException:
        for partial in partials.values():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    for final, partial in partials.items():
        _replace_dir(partial, final)

    contents = {
        "voc_train_lst.txt": [_list_line(root, VOC_DIR / "JPEGImages" / f"{i}.jpg",
                                         VOC_DIR / "SegmentationClassGray" / f"{i}.png") for i in voc_train],
        "voc_val_lst.txt": [_list_line(root, VOC_DIR / "JPEGImages" / f"{i}.jpg",
                                       VOC_DIR / "SegmentationClassGray" / f"{i}.png") for i in voc_val],
        "sbd_train_lst.txt": [_list_line(root, SBD_DIR / "img" / f"{i}.jpg",
                                         SBD_DIR / "cls_png_gray" / f"{i}.png") for i in sbd_kept],
    }
    for name, lines in contents.items():
        tmp = root / f".{name}.partial"
        tmp.write_text("".join(lines))
        os.replace(tmp, root / name)
    return ListsResult(voc_train=root / LIST_NAMES[0], voc_val=root / LIST_NAMES[1],
                       sbd_train=root / LIST_NAMES[2], counts={k: len(v) for k, v in contents.items()})
