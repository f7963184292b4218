"""`JOB/health.jsonl`: one JSON object per host per sample, appended and flushed line by line."""
from __future__ import annotations

import dataclasses
import enum
import json
import os
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Union

__all__ = ["HealthSampleWriter", "read_samples", "plain"]


def plain(value: Any) -> Any:
    """Dataclasses, enums, mappings and tuples as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (dict, MappingProxyType)) or isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


class HealthSampleWriter:
    """Appends records to a JSONL file; safe to call from several threads; each line is written whole."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(plain(record), default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()


def iter_samples(path: Union[str, os.PathLike]) -> Iterator[Dict[str, Any]]:
    """Records of a health.jsonl; a torn last line (writer killed mid-line) is skipped."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except ValueError:
                continue


def read_samples(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    return list(iter_samples(path))
