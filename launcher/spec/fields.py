"""Field readers of the cluster file: each raises `ClusterFileError(file, field path, problem)`.

Shared by the parser of the whole file (`launcher.spec.load`) and of its `slurm:` section
(`launcher.slurm.spec`).
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from launcher.errors import ClusterFileError
from launcher.spec.model import RESERVED_ENV, frozen

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


ADDRESS = re.compile(r"(?!-)[A-Za-z0-9._:-]{1,253}")


OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def sub(parent: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class Checker:
    """Field readers that raise `ClusterFileError(source, field path, problem)`."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> ClusterFileError:
        return ClusterFileError(self.source, where, problem)

    def mapping(self, value: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where or "(top level)", f"expected a mapping, got {kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(sub(where, str(key)), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if value.get(key) is None:
                raise self.fail(sub(where, key), "required")
        return value

    def string(self, value: Any, where: str, pattern: Optional[re.Pattern] = None, what: str = "") -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(where, f"expected a string, got {kind(value)}")
        text = str(value)
        if not text:
            raise self.fail(where, "must not be empty")
        if "\0" in text:
            raise self.fail(where, "contains a NUL character")
        if pattern is not None and not pattern.fullmatch(text):
            raise self.fail(where, f"{text!r} is not {what}")
        return text

    def opt_string(self, value: Any, where: str) -> Optional[str]:
        return None if value is None else self.string(value, where)

    def integer(self, value: Any, where: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {kind(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(where, f"{value} is out of range (must be {bounds})")
        return value

    def number(self, value: Any, where: str, lo: float = 0.0, strict: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"expected a number, got {kind(value)}")
        if value < lo or (strict and value == lo) or value != value:
            raise self.fail(where, f"{value} is out of range (must be {'>' if strict else '>='} {lo})")
        return float(value)

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {kind(value)}")
        return value

    def choice(self, value: Any, where: str, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def env(self, value: Any, where: str) -> Mapping[str, str]:
        if value is None:
            return frozen({})
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping of variable names to values, got {kind(value)}")
        out: Dict[str, str] = {}
        for name, val in value.items():
            key_where = sub(where, str(name))
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                raise self.fail(key_where, f"{name!r} is not a valid environment variable name")
            if name in RESERVED_ENV:
                raise self.fail(key_where, "set by the launcher (from the backend, placement and timeouts); "
                                           "remove it here")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.fail(key_where, f"expected a string or number, got {kind(val)}")
            text = str(val)
            if "\0" in text:
                raise self.fail(key_where, "contains a NUL character")
            out[name] = text
        return frozen(out)


def kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: f"the string {value!r}",
            int: f"the number {value}", float: f"the number {value}"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class LocalDefaults:
    cwd: str
    python: str


def abs_path(c: Checker, value: Any, where: str) -> str:
    text = c.string(value, where)
    if not text.startswith("/"):
        raise c.fail(where, f"{text!r} is not an absolute path")
    return posixpath.normpath(text)


def parse_devices(c: Checker, h: dict, where: str, device: str) -> Tuple[int, ...]:
    if device == "cpu":
        if h.get("devices") is not None:
            raise c.fail(sub(where, "devices"), "device cpu has no device ids: give the number of ranks "
                                                  "on this host as `ranks: N`")
        if h.get("ranks") is None:
            raise c.fail(sub(where, "ranks"), "required for device cpu: the number of ranks on this host")
        return tuple(range(c.integer(h["ranks"], sub(where, "ranks"), lo=1, hi=4096)))
    if h.get("ranks") is not None:
        raise c.fail(sub(where, "ranks"), f"device {device}: one rank per device, list them in `devices`")
    raw = h.get("devices")
    dwhere = sub(where, "devices")
    if raw is None:
        raise c.fail(dwhere, f"required for device {device}: the device ids to use, e.g. [0, 1, 2, 3]")
    if not isinstance(raw, list):
        raise c.fail(dwhere, f"expected a list of device ids, got {kind(raw)}")
    if not raw:
        raise c.fail(dwhere, "no devices: give at least one device id")
    seen: Dict[int, int] = {}
    for i, d in enumerate(raw):
        dev = c.integer(d, sub(dwhere, i), lo=0, hi=1023)
        if dev in seen:
            raise c.fail(sub(dwhere, i), f"device {dev} is listed twice (also at {sub(dwhere, seen[dev])})")
        seen[dev] = i
    return tuple(raw)
