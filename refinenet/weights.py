"""Load checkpoints into a RefineNet, with a report of every tensor: loaded, missing, unexpected, skipped.

`load_into(net, source, kind)` takes a `.ckpt` file or a name -> tensor dict. `kind="refinenet"` loads
a whole network (ModelZoo or this project's checkpoints); `kind="backbone"` loads the ResNet encoder
from an ImageNet checkpoint under the official MindSpore ResNet naming (`down_sample_layer` is mapped
to `downsample`, the `end_point` classifier is ignored). Optimizer state is never loaded, only counted.
Nothing is changed in the network unless every tensor that would be loaded fits.

`.ckpt` files are read with `refinenet.ckpt_reader`, so a truncated or corrupt file is reported with the
tensor it breaks in; its readers are re-exported here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from refinenet.checkpoints import LATEST, CheckpointError, is_optimizer_key, latest_complete, resolve_ckpt_ref
from refinenet.ckpt_reader import (
    CheckpointFile,
    CheckpointLoadError,
    checkpoint_problem,
    read_checkpoint,
    read_checkpoint_names,
    read_parameters,
)

log = logging.getLogger(__name__)

__all__ = ["CheckpointLoadError", "LoadReport", "ShapeMismatch", "load_into", "load_pretrained",
           "read_checkpoint", "read_checkpoint_names", "read_parameters", "checkpoint_problem",
           "resolve_checkpoint", "detect_kind", "save_official_resnet", "is_backbone_name", "KINDS"]

KINDS = ("refinenet", "backbone")
BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
#: The official MindSpore ResNet names the shortcut projection `down_sample_layer`.
OFFICIAL_DOWNSAMPLE, DOWNSAMPLE = ".down_sample_layer.", ".downsample."
#: The ImageNet classifier of the official ResNet, not part of the encoder.
OFFICIAL_HEAD_PREFIX = "end_point."
#: Optimizer and loop bookkeeping beyond `checkpoints.is_optimizer_key` (Adam, loss scaling, callbacks).
EXTRA_STATE_KEYS = ("beta1_power", "beta2_power", "scale_sense", "loss_scale", "epoch_num", "step_num",
                    "current_iterator_step", "last_overflow_iterator_step")
DECODER_MARKERS = ("clf_conv.", "p_ims1d2_outl1_dimred.")

Source = Union[str, os.PathLike, Mapping[str, object]]


@dataclass(frozen=True)
class ShapeMismatch:
    name: str
    checkpoint_shape: Tuple[int, ...]
    network_shape: Tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.checkpoint_shape} in the checkpoint, {self.network_shape} in the network"


@dataclass(frozen=True)
class LoadReport:
    """What one load did. Names are network names; `renamed` holds (checkpoint name, network name)."""

    source: str
    kind: str
    expected: int
    loaded: Tuple[str, ...]
    missing: Tuple[str, ...]
    unexpected: Tuple[str, ...]
    shape_mismatches: Tuple[ShapeMismatch, ...]
    optimizer_state: Tuple[str, ...]
    ignored: Tuple[str, ...]
    renamed: Tuple[Tuple[str, str], ...]

    @property
    def complete(self) -> bool:
        """Every tensor the network expected was loaded."""
        return not self.missing and not self.shape_mismatches

    @property
    def exact(self) -> bool:
        """Complete, and the checkpoint held no network tensor the network lacks."""
        return self.complete and not self.unexpected

    def summary(self) -> str:
        parts = [f"{self.kind}: loaded {len(self.loaded)}/{self.expected} tensors",
                 f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.shape_mismatches)} shape mismatches",
                 f"{len(self.optimizer_state)} optimizer-state entries ignored"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored ({_examples(self.ignored)})")
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed ({_examples(f'{a} -> {b}' for a, b in self.renamed)})")
        return ", ".join(parts)

    def details(self) -> str:
        """The summary plus the names behind every non-empty problem list."""
        lines = [self.summary()]
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", [str(m) for m in self.shape_mismatches])):
            lines += [f"  {label}: {n}" for n in names]
        return "\n".join(lines)

    def require_complete(self) -> LoadReport:
        """Raise `CheckpointLoadError` naming the first tensor the network did not get."""
        if self.shape_mismatches:
            m = self.shape_mismatches[0]
            raise CheckpointLoadError(self.source, m.name, _shape_problem(m))
        if self.missing:
            raise CheckpointLoadError(self.source, self.missing[0],
                                      f"missing from the checkpoint ({len(self.missing)} of {self.expected} "
                                      f"network tensors missing: another depth, or not a {self.kind} "
                                      "checkpoint?)")
        return self

    def require_exact(self) -> LoadReport:
        """`require_complete`, and no unexpected tensors either (a deeper network's checkpoint, say)."""
        self.require_complete()
        if self.unexpected:
            raise CheckpointLoadError(self.source, self.unexpected[0],
                                      f"not in the network ({len(self.unexpected)} unexpected tensors: "
                                      "another depth or architecture?)")
        return self


def _shape_problem(m: ShapeMismatch) -> str:
    return (f"shape {m.checkpoint_shape} does not fit the network's {m.network_shape} "
            "(another depth or class count?)")


def _examples(names: Iterable[str], limit: int = 2) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


# --------------------------------------------------------------------------- checkpoint references

def resolve_checkpoint(ref: str, *, what: str = "checkpoint") -> Path:
    """The file a checkpoint reference names (`latest:DIR` or a path), checked with this module's reader."""
    if ref.startswith(LATEST):
        folder = ref[len(LATEST):]
        if not folder or not Path(folder).is_dir():
            raise CheckpointError(f"{what}: {ref!r}: {folder or 'no directory given'} is not a directory")
        found = latest_complete(folder, check_loadable=False)
        if found is None:
            raise CheckpointError(f"{what}: {ref!r}: no complete checkpoint in {folder}")
        path = found.path
    else:
        path = resolve_ckpt_ref(ref, what=what).path
    read_checkpoint_names(path)
    return Path(path)


# --------------------------------------------------------------------------- mapping and loading

def is_backbone_name(name: str) -> bool:
    return name.startswith(BACKBONE_PREFIXES)


def is_state_key(name: str) -> bool:
    """Optimizer or training-loop state, never network weights."""
    return is_optimizer_key(name) or name in EXTRA_STATE_KEYS


def detect_kind(names: Iterable[str]) -> str:
    """`refinenet` when the checkpoint has decoder tensors, else `backbone`."""
    return "refinenet" if any(n.startswith(DECODER_MARKERS) for n in names) else "backbone"


def _as_array(value: object) -> Optional[np.ndarray]:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "asnumpy"):
        import mindspore as ms

        if value.dtype == ms.bfloat16:
            value = value.astype(ms.float32)
        return value.asnumpy()
    if isinstance(value, (int, float, bool, np.generic)):
        return np.asarray(value)
    return None


def _source_arrays(source: Source) -> Tuple[str, List[str], Dict[str, np.ndarray]]:
    """(where, every tensor name, arrays of the names that are not optimizer state)."""
    if isinstance(source, Mapping):
        arrays = {}
        for name, value in source.items():
            array = _as_array(value)
            if array is not None:
                arrays[str(name)] = array
        return "<dict>", list(arrays), arrays
    path = os.fspath(source)
    with CheckpointFile(path) as ckpt:
        names = ckpt.tensor_names()
        return path, names, ckpt.arrays([n for n in names if not is_state_key(n)])


def _plan(kind: str, checkpoint_names: Iterable[str], net_names: Sequence[str]):
    """Sort checkpoint names into: network name per loadable tensor, state, ignored, unexpected, renamed."""
    net_set = set(net_names)
    targets: Dict[str, str] = {}
    state, ignored, unexpected, renamed = [], [], [], []
    for name in checkpoint_names:
        if is_state_key(name):
            state.append(name)
            continue
        target = name
        if kind == "backbone":
            if name.startswith(OFFICIAL_HEAD_PREFIX):
                ignored.append(name)
                continue
            if OFFICIAL_DOWNSAMPLE in name:
                target = name.replace(OFFICIAL_DOWNSAMPLE, DOWNSAMPLE)
                renamed.append((name, target))
            if not is_backbone_name(target):
                if target in net_set:
                    ignored.append(name)
                else:
                    unexpected.append(name)
                continue
        if target in net_set:
            targets[name] = target
        else:
            unexpected.append(name)
    return targets, state, ignored, unexpected, renamed


def load_into(net, source: Source, kind: str = "refinenet", strict_shapes: bool = True) -> LoadReport:
    """Copy the checkpoint tensors that `kind` selects into `net`; returns (and logs) the report.

    With `strict_shapes` a tensor whose shape differs from the network's raises `CheckpointLoadError`
    naming it and nothing is loaded; otherwise it is skipped and listed in the report.
    Missing tensors never raise here: call `report.require_complete()` where they must not happen.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return _load_arrays(net, *_source_arrays(source), kind, strict_shapes)


def _load_arrays(net, where: str, names: Sequence[str], arrays: Mapping[str, np.ndarray], kind: str,
                 strict_shapes: bool) -> LoadReport:
    import mindspore as ms

    params = {p.name: p for p in net.get_parameters()}
    expected = [n for n in params if kind == "refinenet" or is_backbone_name(n)]
    targets, state, ignored, unexpected, renamed = _plan(kind, names, list(params))

    staged, mismatches = {}, []
    for name, target in targets.items():
        array, param = arrays[name], params[target]
        if tuple(array.shape) != tuple(param.shape):
            mismatch = ShapeMismatch(target, tuple(array.shape), tuple(param.shape))
            if strict_shapes:
                raise CheckpointLoadError(where, name, _shape_problem(mismatch))
            mismatches.append(mismatch)
            continue
        staged[target] = array
    for target, array in staged.items():
        param = params[target]
        param.set_data(ms.Tensor(array, dtype=param.dtype))

    mismatched = {m.name for m in mismatches}
    report = LoadReport(
        source=where, kind=kind, expected=len(expected),
        loaded=tuple(n for n in expected if n in staged),
        missing=tuple(n for n in expected if n not in staged and n not in mismatched),
        unexpected=tuple(unexpected), shape_mismatches=tuple(mismatches), optimizer_state=tuple(state),
        ignored=tuple(ignored), renamed=tuple(renamed))
    _log_report(report)
    return report


def _log_report(report: LoadReport) -> None:
    log.info("loaded %s: %s", report.source, report.summary())
    if report.missing:
        log.warning("%s: %d network tensors missing from the checkpoint, e.g. %s", report.source,
                    len(report.missing), _examples(report.missing, 3))
    if report.unexpected:
        log.warning("%s: %d checkpoint tensors not in the network, e.g. %s", report.source,
                    len(report.unexpected), _examples(report.unexpected, 3))
    for m in report.shape_mismatches:
        log.warning("%s: skipped %s", report.source, m)


def load_pretrained(net, path: Union[str, os.PathLike]) -> LoadReport:
    """Initial weights for training: a RefineNet checkpoint (all network tensors) or an ImageNet ResNet
    checkpoint (all encoder tensors), told apart by the decoder tensors. Anything partial is an error."""
    where, names, arrays = _source_arrays(path)
    return _load_arrays(net, where, names, arrays, detect_kind(names), strict_shapes=True).require_exact()


# --------------------------------------------------------------------------- official ResNet naming

def official_resnet_arrays(net, *, fc_classes: int = 1001, seed: int = 0) -> Dict[str, np.ndarray]:
    """The encoder of `net` under the official MindSpore ResNet names (`down_sample_layer`), plus an
    `end_point` fully connected classifier with random weights, as an ImageNet checkpoint holds it."""
    arrays = {}
    for p in net.get_parameters():
        if is_backbone_name(p.name):
            arrays[p.name.replace(DOWNSAMPLE, OFFICIAL_DOWNSAMPLE)] = p.asnumpy()
    features = [p.shape[0] for p in net.get_parameters() if p.name.startswith("layer4.") and
                p.name.endswith(".gamma")][-1]
    rng = np.random.default_rng(seed)
    arrays["end_point.weight"] = rng.standard_normal((fc_classes, features)).astype(np.float32) * 0.01
    arrays["end_point.bias"] = np.zeros((fc_classes,), np.float32)
    return arrays


def save_official_resnet(net, path: Union[str, os.PathLike], *, fc_classes: int = 1001, seed: int = 0,
                         optimizer_state: bool = False) -> Path:
    """Write `net`'s encoder as an official-ResNet ImageNet checkpoint (MindSpore's own writer).

    With `optimizer_state`, `moments.*`, `learning_rate`, `momentum` and `global_step` entries are
    added as a training run of the official recipe leaves them.
    """
    import mindspore as ms

    arrays = official_resnet_arrays(net, fc_classes=fc_classes, seed=seed)
    if optimizer_state:
        arrays.update({f"moments.{n}": np.zeros_like(a) for n, a in list(arrays.items())})
        arrays.update({"learning_rate": np.full((4,), 0.1, np.float32), "momentum": np.float32(0.9),
                       "global_step": np.array([4], np.int32)})
    entries = [{"name": n, "data": ms.Tensor(np.asarray(a))} for n, a in arrays.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint(entries, os.fspath(path))
    return path
