"""Argument types the subcommands share: argparse names the option and exits 2 on a bad value."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def _parse(text: str, parse: Callable[[str], N], noun: str) -> N:
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None


def seconds(text: str) -> float:
    """A number of seconds above 0."""
    value = _parse(text, float, "number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds > 0")
    return value


def wait_seconds(text: str) -> str:
    """`--wait`'s value: empty (for ever) or a number of seconds >= 0, kept as given."""
    if text and not _parse(text, float, "number of seconds") >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return text


def count(text: str) -> int:
    """A whole number from 1."""
    value = _parse(text, int, "whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def non_negative(text: str) -> int:
    """A whole number from 0."""
    value = _parse(text, int, "whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value
