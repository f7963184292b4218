"""Load checkpoints into a RefineNet, with a report of every tensor: loaded, missing, unexpected, skipped.

`load_into(net, source, kind)` takes a `.ckpt` file or a name -> tensor dict. `kind="refinenet"` loads
a whole network (ModelZoo or this project's checkpoints); `kind="backbone"` loads the ResNet encoder
from an ImageNet checkpoint under the official MindSpore ResNet naming (`down_sample_layer` is mapped
to `downsample`, the `end_point` classifier is ignored). Optimizer state is never loaded, only counted.
Nothing is changed in the network unless every tensor that would be loaded fits.

`.ckpt` files are read here (the protobuf wire format of MindSpore's `checkpoint.proto`, parsed
directly), so a truncated or corrupt file is reported with the tensor it breaks in.
"""
from __future__ import annotations

import binascii
import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from refinenet.checkpoints import LATEST, CheckpointError, is_optimizer_key, latest_complete, resolve_ckpt_ref

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


class CheckpointLoadError(CheckpointError):
    """A checkpoint cannot be read or does not fit the network; names the file and, when known, the tensor."""

    def __init__(self, path: object, tensor: Optional[str], problem: str):
        self.path, self.tensor, self.problem = str(path), tensor, problem
        where = f"{self.path}: tensor {tensor!r}" if tensor else self.path
        super().__init__(f"{where}: {problem}")


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


# --------------------------------------------------------------------------- .ckpt reading

_NP_TYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
             "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16,
             "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_, "BFloat16": np.uint16}
_CRC_MARK = b"crc_num"


@dataclass(frozen=True)
class _Record:
    tag: str
    dims: Tuple[int, ...]
    dtype: str
    start: int
    length: int
    is_tensor: bool


class _Truncated(Exception):
    pass


def _varint(buf, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value or (start, length)) of each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            yield field, wire, (pos, length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Truncated
            yield field, wire, None
        else:
            raise ValueError(f"wire type {wire} is not used by checkpoint files")


def _parse_tensor(buf, pos: int, end: int) -> Tuple[Tuple[int, ...], str, int, int]:
    dims: List[int] = []
    dtype, content = "", (0, -1)
    for field, wire, value in _fields(buf, pos, end):
        if field == 1 and wire == 0:
            dims.append(value - (1 << 64) if value >= 1 << 63 else value)
        elif field == 1 and wire == 2:
            p, stop = value[0], value[0] + value[1]
            while p < stop:
                d, p = _varint(buf, p, stop)
                dims.append(d)
        elif field == 2 and wire == 2:
            dtype = bytes(buf[value[0]:value[0] + value[1]]).decode("utf-8", "replace")
        elif field == 3 and wire == 2:
            content = value
    if content[1] < 0:
        raise ValueError("tensor record without content")
    return tuple(dims), dtype, content[0], content[1]


def _parse_value(buf, pos: int, end: int, state: dict) -> _Record:
    """One `Checkpoint.Value`; `state["tag"]` is set as soon as the tag is read (for error messages)."""
    tensor = None
    is_map = False
    for field, wire, value in _fields(buf, pos, end):
        if field == 1 and wire == 2:
            state["tag"] = bytes(buf[value[0]:value[0] + value[1]]).decode("utf-8", "replace")
        elif field == 2 and wire == 2:
            tensor = _parse_tensor(buf, value[0], value[0] + value[1])
        elif field == 3 and wire == 2:
            is_map = True
    tag = state.get("tag")
    if tag is None:
        raise ValueError("record without a name")
    if tensor is None:
        if not is_map:
            raise ValueError("record without a tensor")
        return _Record(tag, (), "map", 0, 0, False)
    dims, dtype, start, length = tensor
    return _Record(tag, dims, dtype, start, length, True)


def _scan(buf, size: int, path: str) -> List[_Record]:
    """Every record of a checkpoint's bytes, or `CheckpointLoadError` at the first broken one."""
    records: List[_Record] = []
    pos = 0
    while pos < size:
        state: dict = {}
        previous = records[-1].tag if records else None
        try:
            key, body = _varint(buf, pos, size)
            if key != (1 << 3 | 2):
                raise ValueError(f"unexpected protobuf field key {key} at byte {pos}")
            length, body = _varint(buf, body, size)
            end = body + length
            if end > size:
                try:
                    _parse_value(buf, body, size, state)
                except (_Truncated, ValueError):
                    pass
                raise _Truncated
            records.append(_parse_value(buf, body, end, state))
            pos = end
        except _Truncated:
            raise CheckpointLoadError(path, state.get("tag") or previous,
                                      f"file is truncated at {size} bytes, inside this tensor's record "
                                      f"(which starts at byte {pos})") from None
        except ValueError as exc:
            tensor = state.get("tag")
            where = "" if tensor else (f" after tensor {previous!r}" if previous else " at the start")
            raise CheckpointLoadError(path, tensor, f"corrupt checkpoint data{where}: {exc}") from None
    return records


def _decode(buf, path: str, tag: str, records: Sequence[_Record]) -> np.ndarray:
    first = records[0]
    if first.dtype not in _NP_TYPES:
        raise CheckpointLoadError(path, tag, f"unknown tensor type {first.dtype!r}")
    np_type = np.dtype(_NP_TYPES[first.dtype])
    dims = () if first.dims == (0,) else first.dims
    if any(d < 0 for d in dims):
        raise CheckpointLoadError(path, tag, f"negative dimension in shape {dims}")
    nbytes = sum(r.length for r in records)
    need = int(np.prod(dims, dtype=np.int64)) * np_type.itemsize
    if nbytes != need:
        raise CheckpointLoadError(path, tag, f"has {nbytes} bytes of data, but shape {dims} of {first.dtype} "
                                             f"needs {need} (corrupt file)")
    if len(records) == 1:
        data = np.frombuffer(buf, dtype=np_type, count=need // np_type.itemsize, offset=first.start).copy()
    else:
        data = np.frombuffer(b"".join(bytes(buf[r.start:r.start + r.length]) for r in records), dtype=np_type)
    if first.dtype == "BFloat16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.reshape(dims)


class _CheckpointFile:
    """A `.ckpt` file mapped into memory and scanned; tensors are decoded on request."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointLoadError(self.path, None, "does not exist or is not a file")
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointLoadError(self.path, None, f"cannot read: {exc.strerror or exc}") from None
        self._map = self._buf = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            raise CheckpointLoadError(self.path, None, "is empty")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._map)
        if size >= 17 and bytes(self._buf[size - 17:size - 10]) == _CRC_MARK:
            stored = int.from_bytes(bytes(self._buf[size - 10:size]), "big")
            size -= 17
            if binascii.crc32(self._buf[:size]) != stored:
                raise CheckpointLoadError(self.path, None, "CRC32 check failed: the file is damaged")
        self.groups: Dict[str, List[_Record]] = {}
        for r in _scan(self._buf, size, self.path):
            if r.is_tensor:
                self.groups.setdefault(r.tag, []).append(r)
        if not self.groups:
            raise CheckpointLoadError(self.path, None, "holds no tensors (not a MindSpore checkpoint?)")
        for tag, parts in self.groups.items():
            if parts[0].dtype not in _NP_TYPES and parts[0].dtype != "str":
                raise CheckpointLoadError(self.path, tag, f"unknown tensor type {parts[0].dtype!r}")

    def arrays(self, names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        wanted = None if names is None else set(names)
        return {tag: _decode(self._buf, self.path, tag, parts) for tag, parts in self.groups.items()
                if parts[0].dtype != "str" and (wanted is None or tag in wanted)}

    def close(self) -> None:
        if self._buf is not None:
            self._buf.release()
        if self._map is not None:
            self._map.close()
        self._file.close()

    def __enter__(self) -> _CheckpointFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_checkpoint(path: Union[str, os.PathLike], *, names: Optional[Iterable[str]] = None,
                    ) -> Dict[str, np.ndarray]:
    """name -> array of every tensor in a MindSpore `.ckpt` file (only `names`, when given).

    The whole file is validated (structure, types, sizes) even when only some tensors are decoded.
    String entries and map tensors are left out.
    """
    with _CheckpointFile(path) as ckpt:
        return ckpt.arrays(names)


def read_checkpoint_names(path: Union[str, os.PathLike]) -> List[str]:
    """Tensor names of a `.ckpt` file, in file order (validated like `read_checkpoint`, nothing decoded)."""
    with _CheckpointFile(path) as ckpt:
        return [tag for tag, parts in ckpt.groups.items() if parts[0].dtype != "str"]


def read_parameters(path: Union[str, os.PathLike], *, choice: Optional[Callable[[str], bool]] = None) -> dict:
    """name -> `mindspore.Parameter`, like `mindspore.load_checkpoint` (which refuses files larger than the
    *free* memory, page cache not counted), with errors that name the file and tensor."""
    import mindspore as ms

    with _CheckpointFile(path) as ckpt:
        names = [n for n in ckpt.groups if choice is None or choice(n)]
        return {n: ms.Parameter(ms.Tensor(a), name=n) for n, a in ckpt.arrays(names).items()}


def checkpoint_problem(path: Union[str, os.PathLike]) -> Optional[str]:
    """None when `path` is a readable checkpoint with tensors, else what is wrong with it."""
    try:
        read_checkpoint_names(path)
    except CheckpointLoadError as exc:
        return str(exc)
    return None


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
    with _CheckpointFile(path) as ckpt:
        names = [tag for tag, parts in ckpt.groups.items() if parts[0].dtype != "str"]
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
