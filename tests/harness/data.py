"""A tiny synthetic training set in the real VOC/SBD layouts (refinenet-data synth, lists), host copies."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from tests.harness.environment import child_env

#: The training list `lists` writes: SBD train minus the VOC val overlap (6 of 12 images).
TRAIN_LIST = "sbd_train_lst.txt"


def _data(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "refinenet.data", *args], check=True, capture_output=True,
                   timeout=120, env=child_env())


def make_dataset(root: Path, images: int = 12, seed: Optional[int] = 3, min_size: Optional[int] = None,
                 max_size: int = 64) -> Path:
    """`images` synthetic images (sides up to `max_size`) and their lists (absolute paths) under `root`."""
    args = ["synth", "--out", str(root), "--images", str(images), "--max-size", str(max_size)]
    if seed is not None:
        args += ["--seed", str(seed)]
    if min_size is not None:
        args += ["--min-size", str(min_size)]
    _data(*args)
    _data("lists", "--data-root", str(root))
    return Path(root)


def copy_dataset(source: Path, target: Path) -> Path:
    """A host's own copy of a dataset, its lists rewritten to point into the copy."""
    shutil.copytree(source, target)
    _data("lists", "--data-root", str(target))
    return Path(target)
