"""The repository root and the environment of child processes that run the repository's code."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

REPO = Path(__file__).resolve().parents[2]


def child_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """`base` (default: this process's environment) with the repository first on PYTHONPATH, unbuffered
    Python output, and this interpreter's folder on PATH (first, unless there already: msrun and mpirun
    start `python` from PATH)."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])
    env["PYTHONUNBUFFERED"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH")]))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
