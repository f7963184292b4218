"""Checkpoints a job left on a host, read through their manifests (refinenet/manifest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from refinenet import manifest as mf


def saved_epochs(ckpt_dir: Path, newer_than: int = 0) -> List[int]:
    """Epochs of the complete checkpoints in `ckpt_dir` after epoch `newer_than`, in order."""
    entries, _ = mf.scan(ckpt_dir, check_hash=False)
    return sorted(e.manifest.epoch for e in entries if e.manifest.epoch > newer_than)
