"""The one error type of the data tools: which file (and line) is wrong and how."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """Bad input data: a missing folder, an unreadable image, a malformed list line or .mat file."""

    def __init__(self, path, problem: Optional[str] = None, line: Optional[int] = None):
        # One argument is a whole message: MindSpore's data pipeline re-raises an error from its workers
        # as `type(error)(message)`, which keeps the type and the text this way.
        self.path = str(path)
        self.problem = problem
        self.line = line
        if problem is None:
            super().__init__(self.path)
            return
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Raised in the data pipeline's worker processes and re-raised here: pickled by its fields, since
        # the default (its message as the only argument) cannot rebuild it.
        return (type(self), (self.path, self.problem, self.line))
