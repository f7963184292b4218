"""Run one step on many hosts at once, with bounded width, and collect per-host results.

The shape of fabric's GroupResult: every host's value or exception in one map, so a caller sees at
once which hosts failed and why. Threads are transient and at most `width` exist at a time.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Generic, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Hosts worked on at once unless the cluster file says otherwise (pdsh's default).
DEFAULT_WIDTH = 32


@dataclass
class GroupResult(Generic[R]):
    """Per-host outcome of a fan-out: `succeeded[host] = value`, `failed[host] = exception`."""

    succeeded: Dict[str, R] = field(default_factory=dict)
    failed: Dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def fan_out(fn: Callable[[T], R], items: Iterable[T], key: Callable[[T], str], *,
            width: int = DEFAULT_WIDTH, catch: tuple = (Exception,)) -> GroupResult[R]:
    """`fn(item)` for every item, at most `width` at once; exceptions of type `catch` are collected."""
    items = list(items)
    result: GroupResult[R] = GroupResult()

    def one(item: T) -> None:
        try:
            result.succeeded[key(item)] = fn(item)
        except catch as exc:
            result.failed[key(item)] = exc

    if len(items) <= 1:
        for item in items:
            one(item)
        return result
    with ThreadPoolExecutor(max_workers=max(1, min(width, len(items))), thread_name_prefix="fanout") as pool:
        list(pool.map(one, items))
    return result
