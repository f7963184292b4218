"""MindSpore's graph compile cache for a training rank, under a key that names the compiled graph.

A restarted attempt builds the same network on the same shapes and compiles the same graphs again
(8-16 s of a depth-18 first step on CPU here, docs/performance.md "Failure recovery"). With
`REFINENET_COMPILE_CACHE=DIR` (the launcher points it at a folder inside the job's folder on the
host) a rank hands MindSpore the folder `DIR/<key>/` (`MS_COMPILER_CACHE_ENABLE=1`,
`MS_COMPILER_CACHE_PATH`, the 2.x successors of `set_context(enable_compile_cache=...)`);
MindSpore keeps each rank's graphs in `DIR/<key>/rank_<r>/graph_cache/` and loads them instead of
parsing and optimising again. On CPU only this front-end part is cached (MindSpore turns its
back-end cache off for the CPU device); graph mode only.

MindSpore checks only a hash of the entry script and the imported sources outside `sys.path`: it
loads a graph cached for other input shapes and runs it without a word (measured: wrong losses).
So the key is a digest of everything that decides the compiled graph (`graph_key_fields`), and a
different network, shape, precision, rank count, MindSpore or refinenet source gets a folder of its
own. Values that only reach the graph as parameter data (learning rates, seeds) or never reach it
(data augmentation, checkpointing) are left out: runs that differ only in those share the graphs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from refinenet.presets import TrainPreset

ENV_VAR = "REFINENET_COMPILE_CACHE"
KEY_FORMAT = 1
KEY_FILE = "key.json"

#: TrainPreset fields that are part of the compiled graph: shapes, layers, constants folded into it.
GRAPH_FIELDS = ("depth", "num_classes", "bn_mode", "crop_size", "batch_size", "amp_level", "loss_scale",
                "weight_decay", "momentum", "ignore_label")
#: TrainPreset fields that never reach the graph, or reach it only as parameter data (the learning
#: rates are the values of the optimizer's `learning_rate` parameter; its length, steps per epoch x
#: epochs, is in the key as `lr_steps`).
DATA_FIELDS = ("epochs", "base_lr", "lr_type", "warmup_epochs", "lr_decay_step", "lr_decay_rate",
               "save_epochs", "keep_max", "seed", "data_seed", "min_scale", "max_scale")
#: Environment variables whose names start with these change how MindSpore compiles.
COMPILE_ENV_PREFIXES = ("MS_DEV_",)


@cache
def source_digest(package_dir: Optional[str] = None) -> str:
    """sha256 over the relative path and bytes of every .py file of the refinenet package."""
    root = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def graph_key_fields(hp: TrainPreset, *, mode: str, device: str, amp_dtype: str, ranks: int, lr_steps: int,
                     mindspore_version: str, source: str, environ: Mapping[str, str]) -> Dict[str, Any]:
    """Everything that decides the compiled train graph of one rank, as a JSON-able dict."""
    preset = asdict(hp)
    return {
        "format": KEY_FORMAT,
        "network": {name: preset[name] for name in GRAPH_FIELDS},
        # The dtype matters only when mixed precision rewrites the network.
        "amp_dtype": amp_dtype if hp.amp_level != "O0" else None,
        "lr_steps": lr_steps,
        "mode": mode,
        "device": device,
        "ranks": ranks,
        "mindspore": mindspore_version,
        "python": "{}.{}".format(*sys.version_info[:2]),
        "source": source,
        "env": {k: v for k, v in sorted(environ.items()) if k.startswith(COMPILE_ENV_PREFIXES)},
    }


def graph_key(fields: Mapping[str, Any]) -> str:
    """A short, stable digest of `graph_key_fields`: the name of the cache folder."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def enable(fields: Mapping[str, Any], environ: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """Point MindSpore's compile cache at `$REFINENET_COMPILE_CACHE/<key>/`; None when not asked for.

    Call before the first graph compiles. Writes `<key>/key.json` (the fields, for people and
    tools) and sets MindSpore's two variables in `environ` (default: this process's environment,
    which MindSpore reads when a graph compiles). Raises OSError when the folder cannot be made.
    """
    environ = os.environ if environ is None else environ
    root = environ.get(ENV_VAR)
    if not root:
        return None
    folder = Path(root).resolve() / graph_key(fields)
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / KEY_FILE
    if not key_file.is_file():
        from refinenet.manifest import write_json_atomic

        write_json_atomic(key_file, dict(fields))
    environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    environ["MS_COMPILER_CACHE_PATH"] = str(folder)
    return folder


def cached_graphs(folder: Path, rank: int) -> int:
    """How many compiled graphs of `rank` the folder holds (MindSpore's `*compile_cache_<i>.mindir`)."""
    return len(list((folder / f"rank_{rank}" / "graph_cache").glob("*compile_cache_*.mindir")))
