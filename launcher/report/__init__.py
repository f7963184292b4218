"""`refinenet-launch report JOB`: one self-contained HTML page about a job, from its directory only.

`data` reads the job directory (and, for local hosts, the stage's output directory) tolerating
missing and truncated files; `series` turns records into per-rank series; `figures` draws them with
matplotlib's Agg backend; `page` assembles the HTML; `build` puts the sections together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["write_report"]


def write_report(job_path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike, None] = None,
                 now: Optional[float] = None) -> Path:
    """Write `<out_dir>/report.html` (default out_dir: `<job>/report`) and the figures next to it."""
    from launcher.report.build import write_report as write

    return write(job_path, out_dir, now)
