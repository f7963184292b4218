"""Read MindSpore `.ckpt` files without MindSpore: the protobuf wire format of `checkpoint.proto`, parsed
directly, so a truncated or corrupt file is reported with the tensor it breaks in.

`mindspore.load_checkpoint` refuses files larger than the *free* memory (page cache not counted) and
names neither the file nor the tensor when one is damaged. This module depends on nothing else of
`refinenet`, so `checkpoints` (references, manifests) and `weights` (loading into a network) can both
build on it.
"""
from __future__ import annotations

import binascii
import mmap
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["CheckpointError", "CheckpointLoadError", "CheckpointFile", "read_checkpoint",
           "read_checkpoint_names", "read_parameters", "checkpoint_problem"]


class CheckpointError(ValueError):
    """A checkpoint reference cannot be resolved or a checkpoint cannot be read."""


class CheckpointLoadError(CheckpointError):
    """A checkpoint cannot be read or does not fit the network; names the file and, when known, the tensor."""

    def __init__(self, path: object, tensor: Optional[str], problem: str):
        self.path, self.tensor, self.problem = str(path), tensor, problem
        where = f"{self.path}: tensor {tensor!r}" if tensor else self.path
        super().__init__(f"{where}: {problem}")




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


class CheckpointFile:
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

    def tensor_names(self) -> List[str]:
        """Names of the numeric tensors, in file order (string entries left out)."""
        return [tag for tag, parts in self.groups.items() if parts[0].dtype != "str"]

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

    def __enter__(self) -> CheckpointFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_checkpoint(path: Union[str, os.PathLike], *, names: Optional[Iterable[str]] = None,
                    ) -> Dict[str, np.ndarray]:
    """name -> array of every tensor in a MindSpore `.ckpt` file (only `names`, when given).

    The whole file is validated (structure, types, sizes) even when only some tensors are decoded.
    String entries and map tensors are left out.
    """
    with CheckpointFile(path) as ckpt:
        return ckpt.arrays(names)


def read_checkpoint_names(path: Union[str, os.PathLike]) -> List[str]:
    """Tensor names of a `.ckpt` file, in file order (validated like `read_checkpoint`, nothing decoded)."""
    with CheckpointFile(path) as ckpt:
        return ckpt.tensor_names()


def read_parameters(path: Union[str, os.PathLike], *, choice: Optional[Callable[[str], bool]] = None) -> dict:
    """name -> `mindspore.Parameter`, like `mindspore.load_checkpoint` (which refuses files larger than the
    *free* memory, page cache not counted), with errors that name the file and tensor."""
    import mindspore as ms

    with CheckpointFile(path) as ckpt:
        names = [n for n in ckpt.groups if choice is None or choice(n)]
        return {n: ms.Parameter(ms.Tensor(a), name=n) for n, a in ckpt.arrays(names).items()}


def checkpoint_problem(path: Union[str, os.PathLike]) -> Optional[str]:
    """None when `path` is a readable checkpoint with tensors, else what is wrong with it."""
    try:
        read_checkpoint_names(path)
    except CheckpointLoadError as exc:
        return str(exc)
    return None

