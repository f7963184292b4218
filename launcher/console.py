"""The launcher's own messages to the user: `refinenet-launch: TEXT`, each line written whole.

`print(..., flush=True)` writes the text and the newline separately; on a terminal that stdout (the live
rank stream, written by another thread) and stderr share, a line of the stream could land between them.
"""
from __future__ import annotations

from typing import IO

PREFIX = "refinenet-launch: "


def say(stream: IO[str], text: str) -> None:
    """Write `refinenet-launch: text` and its newline in one write, then flush."""
    try:
        stream.write("".join(f"{PREFIX}{line}\n" for line in text.splitlines() or [""]))
        stream.flush()
    except (OSError, ValueError):
        pass
