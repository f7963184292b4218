"""Reading image/label list files: one `<image path> <label path>` pair per line (the ModelZoo format)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

from refinenet.data.errors import DataError

PathLike = Union[str, os.PathLike]


def load_image_list(path: PathLike, *, root: Optional[PathLike] = None,
                    check_files: bool = True) -> List[Tuple[str, str]]:
    """The (image path, label path) pairs of a list file, in file order.

    Relative paths are taken relative to `root` when given, else as written (relative to the
    working directory, like the ModelZoo tools). Blank lines are skipped. With `check_files`, a
    listed file that does not exist is an error naming the list file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "list file not found" if not path.exists() else "list file is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read list file: {exc}") from exc
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(path, f"expected '<image path> <label path>', got {len(fields)} field(s): "
                                  f"{line.strip()!r}", line=number)
        if root is not None:
            fields = [os.path.join(root, f) for f in fields]
        if check_files:
            for kind, name in zip(("image", "label"), fields):
                if not os.path.isfile(name):
                    raise DataError(path, f"{kind} file not found: {name}", line=number)
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise DataError(path, "list file has no entries")
    return pairs
