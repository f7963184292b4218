"""A small RefineNet saved as training saves it, its exports, and the evaluation list beside them: what
export and inference tests start from (MindSpore; for tests/model only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import mindspore as ms
import numpy as np

from refinenet import checkpoints as ck
from refinenet import export
from refinenet.model import build_refinenet
from tests.harness.data import TRAIN_LIST, make_dataset

#: The network export and inference tests share: depth 18, 21 classes, exported for two 49 px crops a batch.
DEPTH, CLASSES, CROP, BATCH = 18, 21, 49, 2


def evaluation_set(root: Path, seed: int) -> Path:
    """Six synthetic images of 40 to 64 pixels under `root/data`; `root/five.txt` lists the training ones of
    SBD and VOC (absolute paths)."""
    data = make_dataset(root / "data", images=6, seed=seed, min_size=40, max_size=64)
    listed = root / "five.txt"
    listed.write_text((data / TRAIN_LIST).read_text() + (data / "voc_train_lst.txt").read_text())
    return listed


def untrained_checkpoint(root: Path, seed: int, depth: int = DEPTH,
                         classes: int = CLASSES) -> Tuple[ms.nn.Cell, Path]:
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


def exported_model(root: Path, *, data_seed: int, net_seed: int, formats: Sequence[str]) -> Dict[str, Any]:
    """`evaluation_set`, `untrained_checkpoint` and the checkpoint exported (`refinenet-export`) in each of
    `formats` as `root/m49.<format>`: {"root", "list", "ckpt", "net" (inference mode), "mindir", "onnx"}."""
    data_list = evaluation_set(root, data_seed)
    net, ckpt = untrained_checkpoint(root, net_seed)
    made: Dict[str, Any] = {"root": root, "list": data_list, "ckpt": ckpt, "net": net}
    common = ["--ckpt", str(ckpt), "--depth", str(DEPTH), "--crop-size", str(CROP), "--batch-size",
              str(BATCH), "--output", str(root / "m49")]
    for file_format in formats:
        path = root / f"m49.{file_format.lower()}"
        assert export.main([*common, "--format", file_format]) == 0 and path.is_file(), file_format
        made[file_format.lower()] = path
    net.set_train(False)
    return made
