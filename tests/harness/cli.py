"""`refinenet-launch` as a user runs it: `python -m launcher.cli ARGS` in a child process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

from tests.harness.environment import child_env

Arg = Union[str, Path, int, float]


def launcher_argv(*args: Arg, python: str = sys.executable) -> List[str]:
    """The command line of `refinenet-launch ARGS` with `python` (default: this interpreter)."""
    return [python, "-m", "launcher.cli", *map(str, args)]


def cli(*args: Arg, env: Optional[Mapping[str, str]] = None, cwd: Optional[Union[str, Path]] = None,
        timeout: float = 60, wrap: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run `refinenet-launch ARGS` to its end (under `wrap`, e.g. `salloc -N2`, when given), the repository
    on PYTHONPATH, stdin empty; its exit code and text output."""
    return subprocess.run([*wrap, *launcher_argv(*args)], env=child_env(env), cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
