"""The parse error shared by the device-tool parsers."""
from __future__ import annotations

from typing import Optional


class ToolOutputError(ValueError):
    """A tool's output without the expected shape; names the tool, the line and what was expected."""

    tool = "tool"

    def __init__(self, problem: str, line_no: Optional[int] = None, line: str = ""):
        where = f"line {line_no}: " if line_no is not None else ""
        shown = f" (got {line.strip()[:120]!r})" if line.strip() else ""
        super().__init__(f"{self.tool} output: {where}{problem}{shown}")
        self.problem, self.line_no, self.line = problem, line_no, line
