"""Training checkpoints: atomic save with a manifest, retention, validation, `latest_complete`.

MindSpore's `save_checkpoint` deletes an existing file of the same name before writing, and does
not fsync. Here a checkpoint is written under a temporary name, fsynced and renamed into place,
then its manifest is written the same way, so a kill at any instant leaves every earlier
checkpoint complete and a reader can tell complete from partial (refinenet/manifest.py).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from refinenet import manifest as mf
from refinenet.ckpt_reader import CheckpointError, read_checkpoint_names, read_parameters

log = logging.getLogger(__name__)

LATEST = "latest:"
_TMP_PREFIX = ".tmp-"
#: Optimizer and bookkeeping entries of a training checkpoint, not network weights.
OPTIMIZER_KEYS = ("learning_rate", "momentum", "global_step")
OPTIMIZER_PREFIXES = ("moments.", "accum.", "moment1.", "moment2.")


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file and, when it has one, its verified manifest."""

    path: Path
    manifest: Optional[mf.Manifest] = None


def is_optimizer_key(name: str) -> bool:
    return name in OPTIMIZER_KEYS or name.startswith(OPTIMIZER_PREFIXES)


def loadable(path: os.PathLike) -> Optional[str]:
    """None when the checkpoint file parses whole and holds a training state, else why not.

    Read with `refinenet.ckpt_reader` rather than `mindspore.load_checkpoint`, which refuses files larger
    than the *free* memory (page cache not counted) and so rejects good checkpoints on busy hosts.
    """
    try:
        names = read_checkpoint_names(path)
    except CheckpointError as exc:
        return f"not loadable: {exc}".splitlines()[0]
    if "global_step" not in names:
        return "not a training checkpoint (no global_step)"
    return None


def latest_complete(directory: os.PathLike, *, check_loadable: bool = True) -> Optional[CheckpointRef]:
    """The newest checkpoint of `directory` (or of `directory/ckpt`) that is complete and loadable.

    Each skipped checkpoint is logged with the reason (no manifest, size or sha256 mismatch,
    unparsable file).
    """
    complete, skipped = mf.scan(directory, check_hash=True)
    for path, why in skipped:
        log.warning("skipping checkpoint %s: %s", path, why)
    for entry in complete:
        problem = loadable(entry.path) if check_loadable else None
        if problem is None:
            return CheckpointRef(Path(entry.path), entry.manifest)
        log.warning("skipping checkpoint %s: %s", entry.path, problem)
    return None


def resolve_ckpt_ref(ref: str, *, what: str = "checkpoint") -> CheckpointRef:
    """`latest:DIR` -> the newest complete checkpoint in DIR; a path -> that file (it must be readable)."""
    if ref.startswith(LATEST):
        folder = ref[len(LATEST):]
        if not folder:
            raise CheckpointError(f"{what}: {ref!r} names no directory")
        if not Path(folder).is_dir():
            raise CheckpointError(f"{what}: {ref!r}: {folder} is not a directory")
        found = latest_complete(folder)
        if found is None:
            raise CheckpointError(f"{what}: {ref!r}: no complete checkpoint in {folder}")
        return found
    path = Path(ref)
    if not path.is_file():
        raise CheckpointError(f"{what}: {ref} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{what}: {ref} is not readable")
    try:
        manifest = mf.verify(path, check_hash=False) if mf.manifest_path(path).exists() else None
    except mf.ManifestError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    return CheckpointRef(path, manifest)


def save_atomic(save_obj, directory: os.PathLike, *, stage: str, epoch: int, step: int, steps_per_epoch: int,
                global_step: int, rank: int) -> CheckpointRef:
    """Save `save_obj` (a Cell or parameter list) as `refinenet-<epoch>_<step>.ckpt` plus its manifest."""
    import mindspore as ms

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / mf.ckpt_name(epoch, step)
    tmp = folder / f"{_TMP_PREFIX}{os.getpid()}-{final.name}"
    try:
        ms.save_checkpoint(save_obj, os.fspath(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        manifest = mf.make_manifest(tmp, stage=stage, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                                    global_step=global_step, rank=rank)
        manifest = mf.Manifest(**{**manifest.to_json(), "checkpoint": final.name})
        old_manifest = mf.manifest_path(final)
        if old_manifest.exists():
            old_manifest.unlink()
        os.replace(tmp, final)
        mf.fsync_dir(folder)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    mf.write_manifest(final, manifest)
    return CheckpointRef(final, manifest)


def remove_stale_temporaries(directory: os.PathLike) -> List[Path]:
    """Delete temporary files of saves that were killed midway; returns what was removed."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f"{_TMP_PREFIX}*"):
        p.unlink()
        removed.append(p)
    for p in folder.glob(f".{mf.PREFIX}-*.tmp"):
        p.unlink()
        removed.append(p)
    return removed


def prune(directory: os.PathLike, keep_max: int) -> List[Path]:
    """Keep the `keep_max` newest complete checkpoints (by global step); delete older ones with manifests."""
    if keep_max < 1:
        return []
    complete, _ = mf.scan(directory, check_hash=False)
    removed = []
    for entry in complete[keep_max:]:
        path = Path(entry.path)
        mf.manifest_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def load_params(path: os.PathLike, *, choice: Optional[Callable[[str], bool]] = None) -> Dict[str, object]:
    """Parameters of a checkpoint file; `CheckpointError` naming the file and tensor when unreadable."""
    return read_parameters(path, choice=choice)


def restore_training_state(path: os.PathLike, train_cell, *,
                           skip: Sequence[str] = ("learning_rate",)) -> List[str]:
    """Load network weights, optimizer moments and global step into `train_cell`; returns names not loaded.

    The learning-rate vector is not restored: the schedule comes from the command line, and the
    global step indexes into it.
    """
    import mindspore as ms

    params = load_params(path, choice=lambda name: name not in skip)
    if "global_step" not in params:
        raise CheckpointError(f"{path}: not a training checkpoint (no global_step), cannot resume from it")
    expected = {p.name for p in train_cell.get_parameters()} - set(skip)
    missing = sorted(expected - set(params))
    if missing:
        raise CheckpointError(f"{path}: resume needs {len(missing)} entries the checkpoint lacks, e.g. "
                              f"{', '.join(missing[:3])}")
    not_loaded, _ = ms.load_param_into_net(train_cell, params, strict_load=True)
    return list(not_loaded)
