"""The one error type of the data tools: which file (and line) is wrong and how."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """Bad input data: a missing folder, an unreadable image, a malformed list line or .mat file."""

    def __init__(self, path, problem: str, line: Optional[int] = None):
        self.path = str(path)
        self.problem = problem
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")
