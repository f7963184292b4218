"""A small RefineNet saved as training saves it, and the evaluation list beside it: what export and
inference tests start from (MindSpore; for tests/model only)."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import mindspore as ms
import numpy as np

from refinenet import checkpoints as ck
from refinenet.model import build_refinenet
from tests.harness.data import TRAIN_LIST, make_dataset


def evaluation_set(root: Path, seed: int) -> Path:
    """Six synthetic images of 40 to 64 pixels under `root/data`; `root/five.txt` lists the training ones of
    SBD and VOC (absolute paths)."""
    data = make_dataset(root / "data", images=6, seed=seed, min_size=40, max_size=64)
    listed = root / "five.txt"
    listed.write_text((data / TRAIN_LIST).read_text() + (data / "voc_train_lst.txt").read_text())
    return listed


def untrained_checkpoint(root: Path, seed: int, depth: int, classes: int) -> Tuple[ms.nn.Cell, Path]:
    """A RefineNet initialised with `seed` (graph mode) and its r1 checkpoint of epoch 1, step 10, written
    atomically with its manifest under `root/run/ckpt`."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(seed)
    net = build_refinenet(num_classes=classes, depth=depth)
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    entries.append({"name": "global_step", "data": ms.Tensor(np.array([10], np.int32))})
    saved = ck.save_atomic(entries, root / "run" / "ckpt", stage="r1", epoch=1, step=10, steps_per_epoch=10,
                           global_step=10, rank=0)
    return net, Path(saved.path)
