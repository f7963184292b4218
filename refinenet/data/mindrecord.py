"""List file -> sharded MindRecord with the ModelZoo schema (`build_MRcd.py` semantics).

Schema `seg_schema`: `file_name` (image basename), `data` (the JPEG bytes as stored), `label` (the
gray PNG bytes). MindRecord keeps no checksums, so every image and label is decoded once before
anything is written; the row count is checked after writing.
"""
from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from refinenet.data.errors import DataError
from refinenet.data.listfile import load_image_list

SCHEMA = {"file_name": {"type": "string"}, "label": {"type": "bytes"}, "data": {"type": "bytes"}}
SCHEMA_NAME = "seg_schema"
CHUNK_ROWS = 1000
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")  # decodable by OpenCV in the training pipeline

ProgressFn = Optional[Callable[[str], Callable[[int, int], None]]]


@dataclass(frozen=True)
class MindRecordResult:
    """The shard files written (each with its `.db` next to it) and the row count read back."""

    files: Tuple[Path, ...]
    rows: int


def shard_files(prefix, shards: int) -> List[Path]:
    """The files FileWriter creates: PREFIX itself for one shard, PREFIX0..PREFIX{n-1} otherwise."""
    prefix = Path(prefix)
    if shards == 1:
        return [prefix]
    return [prefix.with_name(f"{prefix.name}{i}") for i in range(shards)]


def _existing_outputs(prefix) -> List[Path]:
    """Files of any earlier MindRecord with this prefix: PREFIX, PREFIX<n> and their .db files."""
    prefix = Path(prefix)
    found = []
    for path in sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}*")):
        stem = path.name[:-3] if path.name.endswith(".db") else path.name
        suffix = stem[len(prefix.name):]
        if suffix == "" or suffix.isdigit():
            found.append(path)
    return found


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from exc


def check_pair(image_path: str, label_path: str) -> None:
    """Decode both files fully (a truncated JPEG fails here, not in training); DataError naming the file."""
    image_size = _decoded_size(image_path, IMAGE_FORMATS, "image", modes=None)
    label_size = _decoded_size(label_path, ("PNG",), "label", modes=("L",))
    if label_size != image_size:
        raise DataError(label_path, f"label size {label_size[0]}x{label_size[1]} differs from image size "
                                    f"{image_size[0]}x{image_size[1]} of {image_path}")


def _decoded_size(path: str, formats, kind: str, modes) -> Tuple[int, int]:
    try:
        with Image.open(io.BytesIO(_read(path))) as image:
            if image.format not in formats:
                raise DataError(path, f"{kind} format {image.format} is not one of {', '.join(formats)}")
            if modes is not None and image.mode not in modes:
                raise DataError(path, f"{kind} mode {image.mode} is not gray (L): "
                                      f"expected class ids, e.g. SegmentationClassGray, not a palette PNG")
            image.load()
            return image.size
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot decode {kind}: {exc}") from exc


def _check_output_folder(folder: Path) -> None:
    """The folder exists, or its nearest existing ancestor is a writable directory to create it in."""
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(parent, f"is not a folder, cannot hold the output folder {folder}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(parent, "output folder is not writable" if parent == folder
                        else f"is not writable, cannot create the output folder {folder}")


def _make_folders(folder: Path) -> List[Path]:
    """Create `folder` and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for path in missing:
        path.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def count_rows(first_file) -> int:
    """Rows of a MindRecord dataset, read back through MindSpore."""
    import mindspore.dataset as ds

    return ds.MindDataset(str(first_file), columns_list=["file_name"], shuffle=False).get_dataset_size()


def write_mindrecord(data_root, list_path, out_prefix, *, shards: int = 8, overwrite: bool = False,
                     progress: ProgressFn = None) -> MindRecordResult:
    """Write the pairs of `list_path` (relative paths joined to `data_root`) as MindRecord shards."""
    from mindspore.mindrecord import FileWriter

    if shards < 1 or shards > 1000:
        raise ValueError(f"--shards must be in 1..1000, got {shards}")
    if data_root is not None and not Path(data_root).is_dir():
        raise DataError(data_root, "data root folder not found")
    prefix = Path(out_prefix)
    _check_output_folder(prefix.parent)
    existing = _existing_outputs(prefix)
    if existing and not overwrite:
        raise DataError(existing[0], "already exists; pass --overwrite to replace it")
    pairs = load_image_list(list_path, root=data_root)
    if shards > len(pairs):
        raise ValueError(f"--shards {shards} exceeds the {len(pairs)} rows of {list_path}")

    tick = progress("checking") if progress else None
    for done, (image_path, label_path) in enumerate(pairs, start=1):
        check_pair(image_path, label_path)
        if tick:
            tick(done, len(pairs))

    for path in existing:
        path.unlink()
    files = shard_files(prefix, shards)
    created = _make_folders(prefix.parent)
    try:
        writer = FileWriter(str(prefix), shard_num=shards, overwrite=True)
        writer.add_schema(SCHEMA, SCHEMA_NAME)
        tick = progress("writing") if progress else None
        for first in range(0, len(pairs), CHUNK_ROWS):
            rows = [{"file_name": os.path.basename(img), "data": _read(img), "label": _read(lbl)}
                    for img, lbl in pairs[first:first + CHUNK_ROWS]]
            writer.write_raw_data(rows)
            if tick:
                tick(first + len(rows), len(pairs))
        writer.commit()
        rows_read = count_rows(files[0])
        if rows_read != len(pairs):
            raise DataError(files[0], f"wrote {len(pairs)} rows but read back {rows_read}")
    except BaseException:
        for f in files:
            for p in (f, Path(f"{f}.db")):
                if p.exists():
                    p.unlink()
        for folder in reversed(created):
            _remove_if_empty(folder)
        raise
    return MindRecordResult(files=tuple(files), rows=rows_read)
