"""Polling with a deadline: the condition's value, or a failed test that says what was awaited."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Call `predicate` every `interval` s until it returns something true, and return that; an
    AssertionError naming `what` when `timeout` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)
