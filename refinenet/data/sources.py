"""Random access to encoded training samples, from a list file or from a ModelZoo-schema MindRecord.

Both give `len()` and `read(i) -> (image bytes, label bytes)`; decoding happens later, in the
pipeline's workers. A MindRecord is read by its `file_name` index (MindRecord writes an index for
string fields), so nothing is loaded into memory up front.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Tuple

from refinenet.data.errors import DataError
from refinenet.data.listfile import load_image_list

MINDRECORD_FIELDS = ("file_name", "data", "label")


def is_mindrecord(path) -> bool:
    """A MindRecord shard is a file with its `.db` index next to it (`sbdonly0` + `sbdonly0.db`)."""
    return os.path.isfile(f"{path}.db")


class ListSource:
    """Samples named by a list file; files are read when a sample is asked for."""

    def __init__(self, list_path):
        self.path = str(list_path)
        self.pairs: List[Tuple[str, str]] = load_image_list(list_path)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0]

    def read(self, index: int) -> Tuple[bytes, bytes]:
        image_path, label_path = self.pairs[index]
        return _read_bytes(image_path), _read_bytes(label_path)


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from exc


class MindRecordSource:
    """Samples of a MindRecord dataset (any shard names the whole set), ordered by file name."""

    def __init__(self, path):
        self.path = str(path)
        if not is_mindrecord(path):
            raise DataError(path, "not a MindRecord file (no .db index next to it)")
        self._keys = [(name, page) for name, count in _categories(self.path) for page in range(count)]
        if not self._keys:
            raise DataError(path, "MindRecord has no rows")
        self._page = None

    def __len__(self) -> int:
        return len(self._keys)

    def name(self, index: int) -> str:
        return self._keys[index][0]

    def read(self, index: int) -> Tuple[bytes, bytes]:
        if self._page is None:
            self._page = _open_page(self.path)
        name, page = self._keys[index]
        rows = self._page.read_at_page_by_name(name, page, 1)
        if not rows:
            raise DataError(self.path, f"row {name!r} (page {page}) vanished from the MindRecord")
        return bytes(rows[0]["data"]), bytes(rows[0]["label"])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_page"] = None
        return state


def _open_page(path: str):
    from mindspore.mindrecord import MindPage

    try:
        page = MindPage(path, num_consumer=1)
    except Exception as exc:  # MindSpore raises RuntimeError/MRM* errors of several kinds
        raise DataError(path, f"cannot open MindRecord: {exc}") from exc
    if "file_name" not in page.candidate_fields:
        raise DataError(path, "MindRecord has no file_name index (not the ModelZoo segmentation schema)")
    page.category_field = "file_name"
    return page


def _categories(path: str) -> List[Tuple[str, int]]:
    page = _open_page(path)
    info = json.loads(page.read_category_info())
    categories = sorted((c["name"], int(c["count"])) for c in info["categories"])
    if categories:
        row = page.read_at_page_by_name(categories[0][0], 0, 1)[0]
        missing = set(MINDRECORD_FIELDS) - set(row)
        if missing:
            raise DataError(path, f"MindRecord schema lacks field(s) {sorted(missing)}")
    return categories


def open_source(path):
    """A ListSource or MindRecordSource for `path`, chosen by whether a `.db` index sits next to it."""
    if is_mindrecord(path):
        return MindRecordSource(path)
    return ListSource(path)
