"""What the many-host benchmarks share: enough file descriptors, a temporary folder cleaned up however
the run ends (Ctrl-C, SIGTERM), and the machine's load average beside the figures."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, TypeVar

B = TypeVar("B")


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted` (at most the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_line() -> str:
    """`load average at the end: 1.0 2.0 3.0; 2 CPUs` (empty where the system has no load average)."""
    try:
        load = os.getloadavg()
    except OSError:
        return ""
    return f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs"


def run_in_folder(prefix: str, keep: bool, make: Callable[[Path], B], body: Callable[[B], None],
                  cleanup: Callable[[B], None]) -> Optional[int]:
    """`body(make(folder))` in a new temporary folder, SIGTERM taken as Ctrl-C; `cleanup` runs and the
    folder goes (`keep`: it stays, and is named) however it ends. None when done, 130 when interrupted."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    bench = make(root)
    try:
        body(bench)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        cleanup(bench)
        if keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return None
